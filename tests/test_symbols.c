/* test_symbols.c: the global symbols of the static archives (nm): the library exports only the
 * public rnvp_ API (each name declared in include/realnvp.h), and every internal symbol carries
 * its part's prefix (rnvpi_ core, tr_ trainer, srv_ server). Run from the repository root after
 * make. Leaves out the programs' own objects (main files) and what the compiler generates ("__"). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the defined global symbols of archive a, one per line, into a malloc'ed buffer; NULL if nm fails */
static char *global_symbols(const char *a)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "nm -g --defined-only %s 2>/dev/null | awk 'NF==3{print $3}'", a);
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    size_t cap = 1 << 16, n = 0, got;
    char *b = malloc(cap);
    while ((got = fread(b + n, 1, cap - n - 1, p)) > 0)
        if ((n += got) + 1 >= cap) b = realloc(b, cap *= 2);
    b[n] = 0;
    int st = pclose(p);
    if (st != 0 || !n) {
        free(b);
        return NULL;
    }
    return b;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    b[fread(b, 1, (size_t)n, f)] = 0;
    fclose(f);
    return b;
}

/* whether the header declares name as a function or object: "name(" or "name[" or "name;" */
static int declared(const char *hdr, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = strstr(hdr, name); p; p = strstr(p + 1, name)) {
        char before = p > hdr ? p[-1] : ' ', after = p[n];
        if ((before == ' ' || before == '*' || before == '\n' || before == '(') && (after == '(' || after == '[' || after == ';'))
            return 1;
    }
    return 0;
}

/* every symbol of archive a starts with one of the NULL-terminated prefixes (or "__");
 * public ones (rnvp_) are declared in the public header */
static void check_archive(const char *a, const char *const *prefixes, const char *hdr)
{
    char *syms = global_symbols(a);
    ck_assert_msg(syms != NULL, "nm found no symbols in %s (run make first, from the repository root)", a);
    int count = 0;
    for (char *line = strtok(syms, "\n"); line; line = strtok(NULL, "\n")) {
        count++;
        if (!strncmp(line, "__", 2)) continue;   /* sanitizer and compiler generated */
        int ok = 0;
        for (int i = 0; prefixes[i] && !ok; i++) ok = !strncmp(line, prefixes[i], strlen(prefixes[i]));
        ck_assert_msg(ok, "%s: global symbol %s has no prefix of its part (make it static or prefix it)", a, line);
        if (!strncmp(line, "rnvp_", 5))
            ck_assert_msg(declared(hdr, line), "%s: %s looks public (rnvp_) but include/realnvp.h does not declare it", a,
                          line);
    }
    ck_assert_int_gt(count, 0);
    free(syms);
}

START_TEST(test_archive_prefixes)
{
    char *hdr = slurp("include/realnvp.h");
    ck_assert_msg(hdr != NULL, "include/realnvp.h not found (run from the repository root)");
    static const char *const core[] = {"rnvp_", "rnvpi_", NULL};
    static const char *const train[] = {"tr_", NULL};
    static const char *const server[] = {"srv_", NULL};
    check_archive("build/librnvp.a", core, hdr);
    check_archive("build/libtrain.a", train, hdr);
    check_archive("build/libserver.a", server, hdr);
    free(hdr);
}
END_TEST

START_TEST(test_checker_can_fail)
{
    /* the same check refuses what it should: the core under the server's prefix alone */
    char *syms = global_symbols("build/librnvp.a");
    ck_assert(syms != NULL);
    int foreign = 0;
    for (char *line = strtok(syms, "\n"); line; line = strtok(NULL, "\n")) foreign += strncmp(line, "srv_", 4) != 0;
    ck_assert_int_gt(foreign, 0);
    free(syms);
    ck_assert(declared("int rnvp_x(void);", "rnvp_x"));
    ck_assert(!declared("int rnvp_xy(void);", "rnvp_x"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("symbols");
    TCase *t = tcase_create("symbols");
    tcase_add_test(t, test_archive_prefixes);
    tcase_add_test(t, test_checker_can_fail);
    suite_add_tcase(s, t);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
