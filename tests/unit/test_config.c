/* Unit tests for common/moe_config with a table of every option type:
 * defaults; INI files (keys found whatever their section, comments, bool
 * spellings); flags that override the file wherever they stand on the
 * command line; `--key=value` and `--key value`; a bool flag alone and
 * `--no-key`; the errors (unknown key in a file naming file:line and key,
 * unknown flag, "12x", out of range, a string too long, missing values,
 * positional arguments) leaving fields unchanged; --help; and write_ini
 * followed by load_ini restoring every field exactly. Files live in a
 * mkdtemp directory removed by the fixture. */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_config.h"
#include "moe_err.h"
#include "test_util.h"

Suite *test_config_suite(void);

struct tcfg {
    int d_model;
    int64_t steps;
    double lr;
    bool verbose;
    char name[16];
    bool use_cache;
    int64_t seed;
    double beta;
    int workers;
};

/* roles: every option is for program 1 but "verbose", which is for 2 */
#define OPT_R(k, sec, type, field, size, lo, hi, def, roles)                                      \
    {k, sec, type, offsetof(struct tcfg, field), size, lo, hi, def, "help for " k, roles}
#define OPT(k, sec, type, field, size, lo, hi, def) OPT_R(k, sec, type, field, size, lo, hi, def, 1u)

/* Sections interleave on purpose: write_ini must group them. */
static const struct moe_opt table[] = {
    OPT("d_model", "model", MOE_OPT_INT, d_model, 0, 1, 4096, "512"),
    OPT("steps", "train", MOE_OPT_I64, steps, 0, -1e12, 1e12, "1000"),
    OPT("lr", "train", MOE_OPT_DOUBLE, lr, 0, 0, 1, "0.001"),
    OPT_R("verbose", "io", MOE_OPT_BOOL, verbose, 0, 1, 0, "false", 2u),
    OPT("name", "io", MOE_OPT_STRING, name, 16, 1, 0, "moe"),
    OPT("use_cache", "model", MOE_OPT_BOOL, use_cache, 0, 1, 0, "true"),
    OPT("seed", "train", MOE_OPT_I64, seed, 0, 1, 0, "7"),      /* unbounded */
    OPT("beta", "train", MOE_OPT_DOUBLE, beta, 0, 1, 0, "0.9"), /* unbounded */
    OPT("workers", "io", MOE_OPT_INT, workers, 0, 1, 0, "1"),   /* unbounded int */
};
#define NT (sizeof table / sizeof table[0])

static char dir[512];
static char err[512];

static void setup(void)
{
    tu_tmpdir(dir, sizeof dir);
    err[0] = '\0';
}

static void teardown(void) { tu_rmtree(dir); }

/* Writes `text` to <dir>/<name>; returns the path (static, one at a time). */
static const char *put(const char *name, const char *text)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

static bool given[NT], flagged[NT];

static int parse(struct tcfg *c, int argc, char **argv)
{
    memset(c, 0xA5, sizeof *c);
    return moe_config_parse_args(table, NT, c, argc, argv, 1u, given, flagged, err, sizeof err);
}

static void check_defaults(const struct tcfg *c)
{
    ck_assert_int_eq(c->d_model, 512);
    ck_assert_int_eq(c->steps, 1000);
    ck_assert(c->lr == 0.001);
    ck_assert(!c->verbose);
    ck_assert_str_eq(c->name, "moe");
    ck_assert(c->use_cache);
    ck_assert_int_eq(c->seed, 7);
    ck_assert(c->beta == 0.9);
    ck_assert_int_eq(c->workers, 1);
}

START_TEST(config_defaults)
{
    struct tcfg c;
    memset(&c, 0xA5, sizeof c);
    ck_assert_int_eq(moe_config_defaults(table, NT, &c, err, sizeof err), 0);
    check_defaults(&c);
    char *argv[] = {"prog"};
    ck_assert_int_eq(parse(&c, 1, argv), 0);
    check_defaults(&c);
    /* a bad default is reported */
    struct moe_opt bad = table[0];
    bad.def = "zero";
    ck_assert_int_eq(moe_config_defaults(&bad, 1, &c, err, sizeof err), MOE_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err, "d_model"));
}
END_TEST

START_TEST(config_ini_sets)
{
    const char *path = put("a.ini", "; a comment\n"
                                    "# another\n"
                                    "[model]\n"
                                    "d_model = 256\n"
                                    "use_cache = off\n"
                                    "\n"
                                    "[train]\n"
                                    "lr = 0.01   ; inline comment\n"
                                    "steps=-5\n"
                                    "[io]\n"
                                    "name = abc def\n"
                                    "verbose = yes\n");
    struct tcfg c;
    ck_assert_int_eq(moe_config_defaults(table, NT, &c, err, sizeof err), 0);
    ck_assert_int_eq(moe_config_load_ini(table, NT, &c, path, err, sizeof err), 0);
    ck_assert_int_eq(c.d_model, 256);
    ck_assert(!c.use_cache);
    ck_assert(c.lr == 0.01);
    ck_assert_int_eq(c.steps, -5);
    ck_assert_str_eq(c.name, "abc def"); /* found by key, whatever the section */
    ck_assert(c.verbose);
    /* untouched keys keep their defaults */
    ck_assert_int_eq(c.seed, 7);
    ck_assert(c.beta == 0.9);
    /* a missing file is an I/O error naming the file */
    char missing[600];
    snprintf(missing, sizeof missing, "%s/nope.ini", dir);
    ck_assert_int_eq(moe_config_load_ini(table, NT, &c, missing, err, sizeof err), MOE_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err, "nope.ini"));
}
END_TEST

START_TEST(config_flags_override_file)
{
    const char *path = put("b.ini", "[model]\nd_model = 256\n[train]\nlr = 0.01\nsteps = 50\n");
    char cfgeq[700];
    snprintf(cfgeq, sizeof cfgeq, "--config=%s", path);
    char p[600];
    snprintf(p, sizeof p, "%s", path);
    struct tcfg c;
    /* flag before --config */
    char *a1[] = {"prog", "--d-model", "64", "--config", p};
    ck_assert_int_eq(parse(&c, 5, a1), 0);
    ck_assert_int_eq(c.d_model, 64);
    ck_assert(c.lr == 0.01);
    ck_assert_int_eq(c.steps, 50);
    /* flag after --config */
    char *a2[] = {"prog", "--config", p, "--d-model=64", "--steps", "9"};
    ck_assert_int_eq(parse(&c, 6, a2), 0);
    ck_assert_int_eq(c.d_model, 64);
    ck_assert_int_eq(c.steps, 9);
    ck_assert(c.lr == 0.01);
    /* --config=PATH, flags on both sides */
    char *a3[] = {"prog", "--lr", "0.5", cfgeq, "--name", "x"};
    ck_assert_int_eq(parse(&c, 6, a3), 0);
    ck_assert(c.lr == 0.5);
    ck_assert_int_eq(c.d_model, 256);
    ck_assert_str_eq(c.name, "x");
    /* without --config the file plays no part */
    char *a4[] = {"prog", "--lr", "0.5"};
    ck_assert_int_eq(parse(&c, 3, a4), 0);
    ck_assert_int_eq(c.d_model, 512);
}
END_TEST

START_TEST(config_flag_forms)
{
    struct tcfg c;
    char *a1[] = {"prog", "--lr=0.25", "--steps", "12", "--d_model=8", "--beta", "-0.5"};
    ck_assert_int_eq(parse(&c, 7, a1), 0);
    ck_assert(c.lr == 0.25);
    ck_assert_int_eq(c.steps, 12);
    ck_assert_int_eq(c.d_model, 8); /* the snake_case spelling works too */
    ck_assert(c.beta == -0.5);      /* a value may start with '-' */
    /* the last occurrence wins */
    char *a2[] = {"prog", "--steps=1", "--steps=2"};
    ck_assert_int_eq(parse(&c, 3, a2), 0);
    ck_assert_int_eq(c.steps, 2);
    /* a value containing '=' is kept whole */
    char *a3[] = {"prog", "--name=a=b"};
    ck_assert_int_eq(parse(&c, 2, a3), 0);
    ck_assert_str_eq(c.name, "a=b");
}
END_TEST

START_TEST(config_bool_flags)
{
    struct tcfg c;
    char *a1[] = {"prog", "--verbose"};
    ck_assert_int_eq(parse(&c, 2, a1), 0);
    ck_assert(c.verbose);
    char *a2[] = {"prog", "--verbose", "--steps", "3"}; /* alone, followed by a flag */
    ck_assert_int_eq(parse(&c, 4, a2), 0);
    ck_assert(c.verbose);
    ck_assert_int_eq(c.steps, 3);
    char *a3[] = {"prog", "--no-use-cache"};
    ck_assert_int_eq(parse(&c, 2, a3), 0);
    ck_assert(!c.use_cache);
    char *a4[] = {"prog", "--verbose=false", "--use-cache=0"};
    ck_assert_int_eq(parse(&c, 3, a4), 0);
    ck_assert(!c.verbose && !c.use_cache);
    char *a5[] = {"prog", "--verbose", "on", "--use-cache", "no"};
    ck_assert_int_eq(parse(&c, 5, a5), 0);
    ck_assert(c.verbose && !c.use_cache);
    char *a6[] = {"prog", "--verbose", "maybe"};
    ck_assert_int_eq(parse(&c, 3, a6), MOE_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err, "maybe"));
    /* --no- only for bools */
    char *a7[] = {"prog", "--no-d-model"};
    ck_assert_int_eq(parse(&c, 2, a7), MOE_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err, "no-d-model"));
}
END_TEST

START_TEST(config_sections_and_repeats)
{
    struct tcfg c;
    ck_assert_int_eq(moe_config_defaults(table, NT, &c, err, sizeof err), 0);
    /* a key is found whatever its section */
    const char *path = put("s1.ini", "[io]\nd_model = 64\n[train]\nname = x\n");
    ck_assert_int_eq(moe_config_load_ini(table, NT, &c, path, err, sizeof err), 0);
    ck_assert_int_eq(c.d_model, 64);
    ck_assert_str_eq(c.name, "x");
    /* a section no key belongs to: an error on its first key's line */
    ck_assert_int_eq(moe_config_defaults(table, NT, &c, err, sizeof err), 0);
    path = put("s2.ini", "[model]\nd_model = 32\n[modle]\nlr = 0.5\n");
    ck_assert_int_eq(moe_config_load_ini(table, NT, &c, path, err, sizeof err), MOE_ERR_CONFIG);
    char want[700];
    snprintf(want, sizeof want, "%s:4: unknown section [modle]", path);
    ck_assert_msg(strstr(err, want) != NULL, "error \"%s\"", err);
    ck_assert(c.lr == 0.001);
    /* a key given twice, in one section or two */
    path = put("s3.ini", "[train]\nlr = 0.5\nsteps = 3\n[model]\nlr = 0.25\n");
    ck_assert_int_eq(moe_config_load_ini(table, NT, &c, path, err, sizeof err), MOE_ERR_CONFIG);
    snprintf(want, sizeof want, "%s:5: \"lr\" is given a second time", path);
    ck_assert_msg(strstr(err, want) != NULL, "error \"%s\"", err);
    /* an indented line continues the key above: a second value too */
    path = put("s4.ini", "[train]\nsteps = 3\n  4\n");
    ck_assert_int_eq(moe_config_load_ini(table, NT, &c, path, err, sizeof err), MOE_ERR_CONFIG);
    snprintf(want, sizeof want, "%s:3: \"steps\" is given a second time", path);
    ck_assert_msg(strstr(err, want) != NULL, "error \"%s\"", err);
}
END_TEST

START_TEST(config_unknown_key_in_file)
{
    const char *path = put("c.ini", "[model]\nd_model = 128\nbogus_key = 1\nlr = 0.5\n");
    struct tcfg c;
    ck_assert_int_eq(moe_config_defaults(table, NT, &c, err, sizeof err), 0);
    ck_assert_int_eq(moe_config_load_ini(table, NT, &c, path, err, sizeof err), MOE_ERR_CONFIG);
    char want[700];
    snprintf(want, sizeof want, "%s:3:", path);
    ck_assert_msg(strstr(err, want) != NULL, "error \"%s\" does not name %s", err, want);
    ck_assert_ptr_nonnull(strstr(err, "bogus_key"));
    /* the same through --config */
    char p[600];
    snprintf(p, sizeof p, "%s", path);
    char *argv[] = {"prog", "--config", p};
    ck_assert_int_eq(parse(&c, 3, argv), MOE_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err, want));
    /* a bad value on line 2 names line 2 and the key */
    path = put("d.ini", "[model]\nd_model = 12x\n");
    ck_assert_int_eq(moe_config_load_ini(table, NT, &c, path, err, sizeof err), MOE_ERR_CONFIG);
    snprintf(want, sizeof want, "%s:2:", path);
    ck_assert_ptr_nonnull(strstr(err, want));
    ck_assert_ptr_nonnull(strstr(err, "d_model"));
    ck_assert_ptr_nonnull(strstr(err, "12x"));
    /* a line that is not key = value */
    path = put("e.ini", "[model]\nd_model = 8\njust words\n");
    ck_assert_int_eq(moe_config_load_ini(table, NT, &c, path, err, sizeof err), MOE_ERR_CONFIG);
    snprintf(want, sizeof want, "%s:3:", path);
    ck_assert_ptr_nonnull(strstr(err, want));
}
END_TEST

START_TEST(config_unknown_flag_and_arguments)
{
    struct tcfg c;
    char *a1[] = {"prog", "--bogus", "1"};
    ck_assert_int_eq(parse(&c, 3, a1), MOE_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err, "--bogus"));
    char *a2[] = {"prog", "positional"};
    ck_assert_int_eq(parse(&c, 2, a2), MOE_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err, "positional"));
    char *a3[] = {"prog", "--lr"};
    ck_assert_int_eq(parse(&c, 2, a3), MOE_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err, "--lr"));
    char *a4[] = {"prog", "--config"};
    ck_assert_int_eq(parse(&c, 2, a4), MOE_ERR_CONFIG);
    char *a5[] = {"prog", "--"};
    ck_assert_int_eq(parse(&c, 2, a5), MOE_ERR_CONFIG);
    char *a6[] = {"prog", "-d", "5"};
    ck_assert_int_eq(parse(&c, 3, a6), MOE_ERR_CONFIG);
    char missing[600];
    snprintf(missing, sizeof missing, "%s/absent.ini", dir);
    char *a7[] = {"prog", "--config", missing};
    ck_assert_int_eq(parse(&c, 3, a7), MOE_ERR_IO);
}
END_TEST

START_TEST(config_bad_numbers_leave_field)
{
    struct tcfg c;
    ck_assert_int_eq(moe_config_defaults(table, NT, &c, err, sizeof err), 0);
    const struct {
        const char *key, *value;
    } bad[] = {
        {"d_model", "12x"}, {"d_model", ""},    {"d_model", "1e3"},  {"d_model", "12.0"},
        {"d_model", "0"},   {"d_model", "4097"}, {"d_model", "-1"},  {"steps", "2e12"},
        {"steps", "1000000000001"}, {"lr", "0.1x"}, {"lr", "1.5"},   {"lr", "-0.1"},
        {"lr", "nan"},      {"lr", "inf"},      {"beta", "1e999"},   {"workers", "3000000000"},
        {"workers", "-2147483649"}, {"seed", "99999999999999999999"}, {"name", "0123456789abcdef"},
        {"verbose", "2"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        /* a source that is not a flag is followed by the key */
        ck_assert_msg(moe_config_set(table, NT, &c, bad[i].key, bad[i].value, "run.ini:9", err,
                                     sizeof err) == MOE_ERR_CONFIG,
                      "%s = \"%s\" accepted", bad[i].key, bad[i].value);
        ck_assert_msg(strstr(err, "run.ini:9") && strstr(err, bad[i].key),
                      "error \"%s\" does not name the source and the key", err);
        check_defaults(&c);
    }
    /* the flag is named in the message */
    char *argv[] = {"prog", "--d-model", "12x"};
    ck_assert_int_eq(parse(&c, 3, argv), MOE_ERR_CONFIG);
    ck_assert_ptr_nonnull(strstr(err, "--d-model"));
    ck_assert_ptr_nonnull(strstr(err, "12x"));
    /* the bounds themselves are inside the range */
    ck_assert_int_eq(moe_config_set(table, NT, &c, "d_model", "1", "t", err, sizeof err), 0);
    ck_assert_int_eq(c.d_model, 1);
    ck_assert_int_eq(moe_config_set(table, NT, &c, "d_model", "4096", "t", err, sizeof err), 0);
    ck_assert_int_eq(c.d_model, 4096);
    ck_assert_int_eq(moe_config_set(table, NT, &c, "workers", "-2147483648", "t", err, sizeof err),
                     0);
    ck_assert_int_eq(c.workers, INT32_MIN);
    /* a string of capacity - 1 bytes fits exactly */
    ck_assert_int_eq(moe_config_set(table, NT, &c, "name", "0123456789abcde", "t", err, sizeof err),
                     0);
    ck_assert_str_eq(c.name, "0123456789abcde");
    /* unknown key */
    ck_assert_int_eq(moe_config_set(table, NT, &c, "nope", "1", "t", err, sizeof err),
                     MOE_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err, "nope"));
}
END_TEST

START_TEST(config_cli_grammar)
{
    struct tcfg c;
    /* the nearest option is suggested, among the program's own first */
    char *a1[] = {"prog", "--d-modle", "8"};
    ck_assert_int_eq(parse(&c, 3, a1), MOE_ERR_CONFIG);
    ck_assert_msg(strstr(err, "unknown option --d-modle (did you mean --d-model?)"), "%s", err);
    char *a2[] = {"prog", "--setps=3"};
    ck_assert_int_eq(parse(&c, 2, a2), MOE_ERR_CONFIG);
    ck_assert_msg(strstr(err, "did you mean --steps?"), "%s", err);
    char *a3[] = {"prog", "--zzzzzzzzzz"};
    ck_assert_int_eq(parse(&c, 2, a3), MOE_ERR_CONFIG);
    ck_assert_msg(strstr(err, "unknown option --zzzzzzzzzz (see --help)"), "%s", err);
    /* a flag followed by another flag has no value */
    char *a4[] = {"prog", "--name", "--steps", "3"};
    ck_assert_int_eq(parse(&c, 4, a4), MOE_ERR_CONFIG);
    ck_assert_msg(strstr(err, "--name: missing value (use --name=VALUE"), "%s", err);
    char *a5[] = {"prog", "--name=--odd", "--steps", "3"};
    ck_assert_int_eq(parse(&c, 4, a5), 0);
    ck_assert_str_eq(c.name, "--odd");
    /* which keys the command line and the file set */
    const char *path = put("g.ini", "[train]\nlr = 0.5\n");
    char p[600];
    snprintf(p, sizeof p, "%s", path);
    char *a6[] = {"prog", "--config", p, "--steps", "5", "--no-use-cache"};
    ck_assert_int_eq(parse(&c, 6, a6), 0);
    for (size_t i = 0; i < NT; i++) {
        const bool want = !strcmp(table[i].key, "lr") || !strcmp(table[i].key, "steps") ||
                          !strcmp(table[i].key, "use_cache");
        ck_assert_msg(given[i] == want, "%s given %d", table[i].key, given[i]);
    }
    /* positional arguments are errors, with a hint */
    char *a7[] = {"prog", "--steps", "5", "extra"};
    ck_assert_int_eq(parse(&c, 4, a7), MOE_ERR_CONFIG);
    ck_assert_msg(strstr(err, "unexpected argument \"extra\""), "%s", err);
}
END_TEST

START_TEST(config_help)
{
    struct tcfg c;
    char *a1[] = {"prog", "--help"};
    ck_assert_int_eq(parse(&c, 2, a1), 1);
    char *a2[] = {"prog", "--lr", "0.5", "-h"};
    ck_assert_int_eq(parse(&c, 4, a2), 1);
    char *a3[] = {"prog", "--bogus", "--help"}; /* help wins over errors */
    ck_assert_int_eq(parse(&c, 3, a3), 1);
    /* print_help lists every flag in kebab case with its default */
    char path[600];
    snprintf(path, sizeof path, "%s/help.txt", dir);
    FILE *f = fopen(path, "w+");
    ck_assert_ptr_nonnull(f);
    moe_config_print_help(table, NT, f, "prog", "A test program.", 1u, "See also: prog2.");
    rewind(f);
    char text[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    ck_assert_ptr_nonnull(strstr(text, "--d-model"));
    ck_assert_ptr_nonnull(strstr(text, "--use-cache"));
    ck_assert_ptr_nonnull(strstr(text, "(default: 512)"));
    /* only the program's own options, grouped, then the note */
    ck_assert_msg(!strstr(text, "--verbose"), "%s", text);
    ck_assert_ptr_nonnull(strstr(text, "\nModel:\n")); /* section titles */
    ck_assert_ptr_nonnull(strstr(text, "See also: prog2."));
}
END_TEST

START_TEST(config_write_load_round_trip)
{
    struct tcfg c, r;
    ck_assert_int_eq(moe_config_defaults(table, NT, &c, err, sizeof err), 0);
    /* every field away from its default, with values that need care */
    c.d_model = 4096;
    c.steps = -999999999999;
    c.lr = 1.0 / 3.0;                   /* 17 significant digits needed */
    c.verbose = true;
    snprintf(c.name, sizeof c.name, "%s", "run 7/b=x");
    c.use_cache = false;
    c.seed = INT64_C(1234567890123456789); /* not representable in a double */
    c.beta = -2.2250738585072014e-308;  /* -DBL_MIN: the last normal */
    c.workers = INT32_MIN;
    char path[600];
    snprintf(path, sizeof path, "%s/out.ini", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(moe_config_write_ini(table, NT, &c, f), 0);
    fclose(f);

    ck_assert_int_eq(moe_config_defaults(table, NT, &r, err, sizeof err), 0);
    ck_assert_int_eq(moe_config_load_ini(table, NT, &r, path, err, sizeof err), 0);
    ck_assert_int_eq(r.d_model, c.d_model);
    ck_assert_int_eq(r.steps, c.steps);
    ck_assert(memcmp(&r.lr, &c.lr, sizeof r.lr) == 0);
    ck_assert(r.verbose == c.verbose);
    ck_assert_str_eq(r.name, c.name);
    ck_assert(r.use_cache == c.use_cache);
    ck_assert(r.seed == c.seed);
    ck_assert(memcmp(&r.beta, &c.beta, sizeof r.beta) == 0);
    ck_assert_int_eq(r.workers, c.workers);

    /* each section once, in first-seen order */
    f = fopen(path, "r");
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    const char *m = strstr(text, "[model]"), *t = strstr(text, "[train]"), *io = strstr(text, "[io]");
    ck_assert(m && t && io && m < t && t < io);
    ck_assert_ptr_null(strstr(m + 1, "[model]"));
    ck_assert_ptr_null(strstr(t + 1, "[train]"));
    /* use_cache (section model) is written under [model] */
    const char *uc = strstr(text, "use_cache");
    ck_assert(uc && uc > m && uc < t);

    /* the defaults round-trip too, and writing is deterministic */
    ck_assert_int_eq(moe_config_defaults(table, NT, &c, err, sizeof err), 0);
    f = fopen(path, "w");
    ck_assert_int_eq(moe_config_write_ini(table, NT, &c, f), 0);
    fclose(f);
    memset(&r, 0, sizeof r);
    ck_assert_int_eq(moe_config_load_ini(table, NT, &r, path, err, sizeof err), 0);
    check_defaults(&r);
}
END_TEST

START_TEST(config_overlong_line_is_an_error)
{
    /* inih reads lines of at most 200 bytes: a longer line must fail to
     * load rather than set a silently truncated value. */
    static const struct moe_opt long_table[] = {
        {"path", "io", MOE_OPT_STRING, 0, 400, 1, 0, "", "a long string", 0},
    };
    char cfg[400] = {0}, text[600];
    memset(text, 0, sizeof text);
    strcpy(text, "[io]\npath = ");
    memset(text + strlen(text), 'p', 250);
    strcat(text, "\n");
    const char *path = put("long.ini", text);
    ck_assert_int_ne(moe_config_load_ini(long_table, 1, cfg, path, err, sizeof err), 0);
    /* a value well inside the limit loads */
    path = put("short.ini", "[io]\npath = /data/wikitext-2/train.tokens\n");
    ck_assert_int_eq(moe_config_load_ini(long_table, 1, cfg, path, err, sizeof err), 0);
    ck_assert_str_eq(cfg, "/data/wikitext-2/train.tokens");
}
END_TEST

Suite *test_config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("parse");
    tcase_set_timeout(tc, 10);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, config_defaults);
    tcase_add_test(tc, config_ini_sets);
    tcase_add_test(tc, config_flags_override_file);
    tcase_add_test(tc, config_flag_forms);
    tcase_add_test(tc, config_bool_flags);
    tcase_add_test(tc, config_unknown_key_in_file);
    tcase_add_test(tc, config_sections_and_repeats);
    tcase_add_test(tc, config_unknown_flag_and_arguments);
    tcase_add_test(tc, config_bad_numbers_leave_field);
    tcase_add_test(tc, config_help);
    tcase_add_test(tc, config_cli_grammar);
    suite_add_tcase(s, tc);
    TCase *tw = tcase_create("ini");
    tcase_set_timeout(tw, 10);
    tcase_add_checked_fixture(tw, setup, teardown);
    tcase_add_test(tw, config_write_load_round_trip);
    tcase_add_test(tw, config_overlong_line_is_an_error);
    suite_add_tcase(s, tw);
    return s;
}
