/* test_fuzz_replay.c: replays every fuzzing seed (tests/fuzz/corpus_NAME/) and every input that
 * once crashed a harness (tests/fuzz/regress_NAME/) through the same harness code, in the normal
 * build and under `make asan`. Run from the repository root. Leaves out fuzzing itself (make fuzz). */
#define LLVMFuzzerTestOneInput fuzz_png_one
#include "fuzz/fuzz_png.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_loader_one
#include "fuzz/fuzz_loader.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_latents_one
#include "fuzz/fuzz_latents.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_multipart_one
#include "fuzz/fuzz_multipart.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_query_one
#include "fuzz/fuzz_query.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_oip_one
#include "fuzz/fuzz_oip.c"
#undef LLVMFuzzerTestOneInput

#include <check.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

typedef int (*harness_fn)(const uint8_t *, size_t);

static char current[600];   /* the input being replayed, named when it crashes */

static void on_crash(int sig)
{
    static const char pre[] = "test_fuzz_replay: crashed on ";
    if (write(2, pre, sizeof pre - 1) < 0 || write(2, current, strlen(current)) < 0 || write(2, "\n", 1) < 0) { /* nothing */ }
    signal(sig, SIG_DFL);
    raise(sig);
}

/* replays every file of dir (a missing dir counts 0); returns the number replayed */
static int replay_dir(const char *dir, harness_fn fn)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(current, sizeof current, "%s/%s", dir, e->d_name);
        FILE *f = fopen(current, "rb");
        ck_assert_msg(f != NULL, "cannot open %s", current);
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        rewind(f);
        uint8_t *buf = malloc((size_t)len + 1);   /* exact size (+1 for len 0) so ASan sees overreads */
        ck_assert_uint_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
        fclose(f);
        ck_assert_int_eq(fn(buf, (size_t)len), 0);
        free(buf);
        n++;
    }
    closedir(d);
    return n;
}

static void replay(const char *name, harness_fn fn, int min_seeds)
{
    signal(SIGABRT, on_crash);
    signal(SIGSEGV, on_crash);
    signal(SIGBUS, on_crash);
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fuzz/corpus_%s", name);
    int seeds = replay_dir(dir, fn);
    ck_assert_msg(seeds >= min_seeds, "%s: %d seed files, expected at least %d (run from the repository root)", dir,
                  seeds, min_seeds);
    snprintf(dir, sizeof dir, "tests/fuzz/regress_%s", name);
    int regress = replay_dir(dir, fn);
    fprintf(stderr, "fuzz replay %s: %d seeds, %d regression inputs\n", name, seeds, regress);
}

START_TEST(test_replay_png) { replay("png", fuzz_png_one, 5); }
END_TEST
START_TEST(test_replay_loader) { replay("loader", fuzz_loader_one, 2); }
END_TEST
START_TEST(test_replay_latents) { replay("latents", fuzz_latents_one, 3); }
END_TEST
START_TEST(test_replay_multipart) { replay("multipart", fuzz_multipart_one, 3); }
END_TEST
START_TEST(test_replay_query) { replay("query", fuzz_query_one, 3); }
END_TEST
START_TEST(test_replay_oip) { replay("oip", fuzz_oip_one, 6); }
END_TEST

int main(void)
{
    Suite *s = suite_create("fuzz_replay");
    TCase *t = tcase_create("replay");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_replay_png);
    tcase_add_test(t, test_replay_loader);
    tcase_add_test(t, test_replay_latents);
    tcase_add_test(t, test_replay_multipart);
    tcase_add_test(t, test_replay_query);
    tcase_add_test(t, test_replay_oip);
    suite_add_tcase(s, t);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? 1 : 0;
}
