/* chat-bench --self-test: checks the JSON scanner, the histogram and the message checker on
 * synthetic input, with no server. Main thread. */
#ifndef BENCH_SELFTEST_H
#define BENCH_SELFTEST_H

/* Returns 0 when every check passed; prints each failure on stderr. */
int bench_self_test(void);

#endif
