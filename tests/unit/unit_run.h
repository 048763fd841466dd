/* The end of every unit suite's main(): runs the suite, frees the runner, and returns the exit
 * status ctest reads (failure when any test failed). */
#ifndef UNIT_RUN_H
#define UNIT_RUN_H
#include <check.h>
#include <stdlib.h>

static inline int unit_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

#endif
