-- 0005_push: the notify role's per-member watermark of what was already pushed.
--
-- Applied by `chat-worker migrate` as role `chat` in one transaction (no BEGIN/COMMIT, no psql
-- meta-commands, no rows from the last statement). docs/notifications.md describes the role.
--
-- A member who has not seen a message (conversation_members.delivered_seq < its seq) within
-- CHAT_PUSH_GRACE gets one push that covers everything unread so far in that conversation;
-- pushed_seq then moves to the conversation's last_seq, so the later messages of the same burst
-- find nothing new and a burst gives one push, not one per message.
--
-- A table of its own rather than a column on conversation_members: cursor updates are the hot
-- writes on conversation_members, and the notifier's claims and watermarks would take the same
-- row locks. A row exists only for members the notifier found behind at least once.
--
-- Claims: several notify workers (and threads) process NotifyRequests of the same conversation
-- at once. Before it POSTs, a worker claims the (conversation, user) rows it will push for
-- (claim_token, claimed_seq, claimed_until) with one UPDATE that skips rows another worker holds
-- a live claim on; after a 2xx it moves pushed_seq to claimed_seq and clears the claim, after a
-- failure it only clears the claim. A claim of a worker that died runs out at claimed_until.
------------------------------------------------------------------------------------------------
CREATE TABLE push_state (
    conversation_id text        NOT NULL,
    user_id         text        NOT NULL,
    pushed_seq      bigint      NOT NULL DEFAULT 0
                                CONSTRAINT push_state_pushed_seq_nonneg CHECK (pushed_seq >= 0),
    pushed_at       timestamptz,
    claim_token     text,
    claimed_seq     bigint,
    claimed_until   timestamptz,
    PRIMARY KEY (conversation_id, user_id),
    -- a member who leaves takes their watermark along (and starts from 0 if added again)
    CONSTRAINT push_state_member_fkey FOREIGN KEY (conversation_id, user_id)
        REFERENCES conversation_members (conversation_id, user_id) ON DELETE CASCADE
);

COMMENT ON TABLE push_state IS
    'Notify role: per member, the seq up to which a push was sent (pushed_seq) and the claim of the worker pushing now.';
COMMENT ON COLUMN push_state.pushed_seq IS
    'Every event up to this seq was covered by a push that the webhook answered 2xx (0 = none yet).';
COMMENT ON COLUMN push_state.claim_token IS
    'Which notify batch is pushing for this member now (NULL: nobody); with claimed_seq, the seq it covers, and claimed_until, when the claim runs out.';
