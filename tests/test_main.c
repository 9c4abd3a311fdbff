/* The test runner: every suite of the generated registry, each test in its
 * own process (Check's fork mode) with a timeout.
 *
 *   moe-tests                 run everything
 *   moe-tests SUITE [CASE]    run one suite, or one test case of it
 * Ends with the line "N passed, N failed". */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern Suite *(*const test_registry[])(void);

int main(int argc, char **argv)
{
    const char *only_suite = argc > 1 ? argv[1] : NULL;
    const char *only_case = argc > 2 ? argv[2] : NULL;
    SRunner *sr = NULL;
    for (int i = 0; test_registry[i]; i++) {
        Suite *s = test_registry[i]();
        if (!sr)
            sr = srunner_create(s);
        else
            srunner_add_suite(sr, s);
    }
    if (!sr)
        return 1;
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run(sr, only_suite, only_case, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    int run = srunner_ntests_run(sr);
    srunner_free(sr);
    printf("%d passed, %d failed\n", run - failed, failed);
    return failed == 0 && run > 0 ? 0 : 1;
}
