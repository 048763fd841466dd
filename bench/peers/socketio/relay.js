// A minimal Socket.IO 4.8 chat relay for bench/run: the ceiling of a naive relay, for scale.
// Nothing is stored, nothing is checked but room membership. A client connects with
// auth {user, convs: [conversation ids]} and is put in one room per conversation; an event
// "send" {conv, cmid, body} is emitted as "msg" {conv, cmid, from, body} to everyone in that
// room, the sender included (like the platform, which delivers to the sender's devices too),
// then acknowledged to the sender with {ok: true}.
//
//   node relay.js HOST PORT
'use strict';

const http = require('http');
const { Server } = require('socket.io');

const host = process.argv[2] || '127.0.0.1';
const port = Number(process.argv[3] || 32300);

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok\n');
    return;
  }
  res.writeHead(404);
  res.end();
});

const io = new Server(server, {
  transports: ['websocket'], // the bench speaks WebSocket only, as the other servers do
  serveClient: false,
  perMessageDeflate: false,
  maxHttpBufferSize: 1e6,
});

io.on('connection', (socket) => {
  const auth = socket.handshake.auth || {};
  const user = typeof auth.user === 'string' ? auth.user : socket.id;
  if (Array.isArray(auth.convs)) {
    for (const c of auth.convs) {
      if (typeof c === 'string') socket.join(c);
    }
  }
  socket.on('send', (m, ack) => {
    if (!m || typeof m.conv !== 'string' || !socket.rooms.has(m.conv)) {
      if (typeof ack === 'function') ack({ error: 'not_member' });
      return;
    }
    io.to(m.conv).emit('msg', { conv: m.conv, cmid: m.cmid, from: user, body: m.body });
    if (typeof ack === 'function') ack({ ok: true });
  });
});

server.listen(port, host, () => {
  process.stdout.write(`relay listening on ${host}:${port} (socket.io ${require('socket.io/package.json').version})\n`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    io.close();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
