/* Option table, INI files (through inih) and flags (see moe_config.h). */
#include "moe_config.h"

#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "moe_cli.h"
#include "moe_err.h"

static const struct moe_opt *find_opt(const struct moe_opt *table, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(table[i].key, key) == 0)
            return &table[i];
    return NULL;
}

static bool in_range(const struct moe_opt *o, double v)
{
    return o->min > o->max || (v >= o->min && v <= o->max);
}

/* Strict number parsing: the whole string must be consumed. */
static int parse_value(const struct moe_opt *o, void *cfg, const char *value, const char *where,
                       char *err, size_t errlen)
{
    char *field = (char *)cfg + o->offset;
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case MOE_OPT_INT:
    case MOE_OPT_I64: {
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end != '\0') {
            moe_err_set(err, errlen, "%s: expected an integer, got \"%s\"", where, value);
            return MOE_ERR_CONFIG;
        }
        if (!in_range(o, (double)v) || (o->type == MOE_OPT_INT && (v > INT32_MAX || v < INT32_MIN))) {
            moe_err_set(err, errlen, "%s: %lld is out of range [%g, %g]", where, v, o->min, o->max);
            return MOE_ERR_CONFIG;
        }
        if (o->type == MOE_OPT_INT)
            *(int *)field = (int)v;
        else
            *(int64_t *)field = (int64_t)v;
        return 0;
    }
    case MOE_OPT_DOUBLE: {
        double v = strtod(value, &end);
        if (errno || end == value || *end != '\0' || !isfinite(v)) {
            moe_err_set(err, errlen, "%s: expected a number, got \"%s\"", where, value);
            return MOE_ERR_CONFIG;
        }
        if (!in_range(o, v)) {
            moe_err_set(err, errlen, "%s: %g is out of range [%g, %g]", where, v, o->min, o->max);
            return MOE_ERR_CONFIG;
        }
        *(double *)field = v;
        return 0;
    }
    case MOE_OPT_BOOL: {
        static const char *yes[] = {"1", "true", "yes", "on"};
        static const char *no[] = {"0", "false", "no", "off"};
        for (int i = 0; i < 4; i++) {
            if (strcmp(value, yes[i]) == 0) {
                *(bool *)field = true;
                return 0;
            }
            if (strcmp(value, no[i]) == 0) {
                *(bool *)field = false;
                return 0;
            }
        }
        moe_err_set(err, errlen, "%s: expected true or false, got \"%s\"", where, value);
        return MOE_ERR_CONFIG;
    }
    case MOE_OPT_STRING:
        if (strlen(value) >= o->size) {
            moe_err_set(err, errlen, "%s: value is longer than %zu bytes", where, o->size - 1);
            return MOE_ERR_CONFIG;
        }
        memcpy(field, value, strlen(value) + 1);
        return 0;
    }
    moe_err_set(err, errlen, "%s: unknown option type", where);
    return MOE_ERR_CONFIG;
}

int moe_config_defaults(const struct moe_opt *table, size_t n, void *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        char where[160];
        snprintf(where, sizeof where, "default of %s", table[i].key);
        int rc = parse_value(&table[i], cfg, table[i].def, where, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

int moe_config_set(const struct moe_opt *table, size_t n, void *cfg, const char *key,
                   const char *value, const char *where, char *err, size_t errlen)
{
    const struct moe_opt *o = find_opt(table, n, key);
    if (!o) {
        if (where[0])
            moe_err_set(err, errlen, "%s: unknown option \"%s\"", where, key);
        else
            moe_err_set(err, errlen, "unknown option \"%s\"", key);
        return MOE_ERR_NOTFOUND;
    }
    /* The label of errors: a flag names itself; elsewhere add the key. */
    char label[600];
    if (strncmp(where, "--", 2) == 0)
        snprintf(label, sizeof label, "%s", where);
    else if (where[0])
        snprintf(label, sizeof label, "%s: %s", where, key);
    else
        snprintf(label, sizeof label, "%s", key);
    return parse_value(o, cfg, value, label, err, errlen);
}

struct ini_ctx {
    const struct moe_opt *table;
    size_t n;
    void *cfg;
    const char *path;
    bool *given;
    unsigned char *seen; /* (n) keys met in this file */
    int rc;
    char msg[512];
};

/* Whether some key of the table is written under section `sec`. */
static bool known_section(const struct moe_opt *table, size_t n, const char *sec)
{
    for (size_t i = 0; i < n; i++)
        if (table[i].section && strcmp(table[i].section, sec) == 0)
            return true;
    return false;
}

/* Debian's inih passes no line number to the handler: the error text is
 * kept here and prefixed with the line ini_parse_file() returns. */
static int ini_on_entry(void *user, const char *section, const char *name, const char *value)
{
    struct ini_ctx *c = user;
    if (c->rc)
        return 0;
    /* a key is found whatever its section, but a section no key belongs
     * to is a typo ([modle]) and a key given twice loses one value */
    if (section[0] && !known_section(c->table, c->n, section)) {
        snprintf(c->msg, sizeof c->msg, "unknown section [%.100s] (every key belongs to one of the "
                 "sections --help lists)", section);
        c->rc = MOE_ERR_CONFIG;
        return 0;
    }
    const struct moe_opt *k = find_opt(c->table, c->n, name);
    if (k && c->seen[k - c->table]++) {
        snprintf(c->msg, sizeof c->msg, "\"%.100s\" is given a second time (a key may appear once; "
                 "an indented line continues the one above it)", name);
        c->rc = MOE_ERR_CONFIG;
        return 0;
    }
    c->rc = moe_config_set(c->table, c->n, c->cfg, name, value ? value : "", "", c->msg,
                           sizeof c->msg);
    if (c->rc == MOE_ERR_NOTFOUND)
        c->rc = MOE_ERR_CONFIG;
    const struct moe_opt *o = c->rc == 0 && c->given ? find_opt(c->table, c->n, name) : NULL;
    if (o)
        c->given[o - c->table] = true;
    return c->rc == 0;
}

/* The largest configuration file read (a few KB in practice). */
#define CONFIG_FILE_MAX (1 << 20)

/* The whole file at path as a C string (caller frees), refusing what is
 * not a regular text file: inih would read a folder as an empty file and
 * cut lines at a NUL byte, so the options it holds would be lost without a
 * word. */
static char *config_read(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        moe_err_set(err, errlen, "%s: cannot open config file: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    char *text = NULL;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode))
        moe_err_set(err, errlen, "%s: the config file is not a regular file", path);
    else if (st.st_size > CONFIG_FILE_MAX)
        moe_err_set(err, errlen, "%s: a config file of %lld bytes is too large (at most %d)", path,
                    (long long)st.st_size, CONFIG_FILE_MAX);
    else if (!(text = calloc((size_t)st.st_size + 1, 1)))
        moe_err_set(err, errlen, "%s: out of memory reading the config file", path);
    else if (fread(text, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        moe_err_set(err, errlen, "%s: cannot read the config file", path);
        free(text);
        text = NULL;
    } else if (memchr(text, '\0', (size_t)st.st_size)) {
        moe_err_set(err, errlen, "%s: the config file is not text (a NUL byte at offset %zu)",
                    path, (size_t)((char *)memchr(text, '\0', (size_t)st.st_size) - text));
        free(text);
        text = NULL;
    }
    fclose(f);
    return text;
}

static int config_load_ini(const struct moe_opt *table, size_t n, void *cfg, const char *path,
                           bool *given, char *err, size_t errlen)
{
    char *text = config_read(path, err, errlen);
    if (!text)
        return MOE_ERR_IO;
    int rc = moe_config_load_ini_text(table, n, cfg, text, path, given, err, errlen);
    free(text);
    return rc;
}

int moe_config_load_ini(const struct moe_opt *table, size_t n, void *cfg, const char *path,
                        char *err, size_t errlen)
{
    return config_load_ini(table, n, cfg, path, NULL, err, errlen);
}

int moe_config_load_ini_text(const struct moe_opt *table, size_t n, void *cfg, const char *text,
                             const char *name, bool *given, char *err, size_t errlen)
{
    struct ini_ctx c = {table, n, cfg, name, given, calloc(n ? n : 1, 1), 0, ""};
    if (!c.seen)
        return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "%s: out of memory", name);
    int r = ini_parse_string(text, ini_on_entry, &c);
    free(c.seen);
    if (c.rc)
        return moe_err_fail(c.rc, err, errlen, "%s:%d: %s", name, r, c.msg);
    if (r != 0)
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "%s:%d: malformed line (expected key = value or [section])", name, r);
    return 0;
}

/* The flag of a key: "d_model" -> "d-model" into buf. */
static void key_to_flag(const char *key, char *buf, size_t cap)
{
    size_t k = 0;
    for (const char *p = key; *p && k + 1 < cap; p++)
        buf[k++] = *p == '_' ? '-' : *p;
    buf[k] = '\0';
}

/* getopt_long's table for `table`: --kebab-key and --snake_key (val =
 * VAL0 + i), --no-key for booleans (VAL0 + n + i), --config (VAL0 + 2n),
 * --help ('h'); VAL0 keeps them apart from getopt's '?' and ':'. The names
 * live in `names`; both are freed by the caller. */
enum { VAL0 = 1000 };
static struct option *long_options(const struct moe_opt *table, size_t n, char **names)
{
    struct option *o = calloc(3 * n + 3, sizeof *o);
    char *buf = malloc(3 * n * 136 + 1);
    *names = buf;
    if (!o || !buf) {
        free(o);
        return NULL;
    }
    size_t k = 0;
    char *p = buf;
    for (size_t i = 0; i < n; i++) {
        char flag[128];
        key_to_flag(table[i].key, flag, sizeof flag);
        const int arg = table[i].type == MOE_OPT_BOOL ? optional_argument : required_argument;
        p += sprintf(p, "%s", flag) + 1;
        o[k++] = (struct option){p - strlen(flag) - 1, arg, NULL, VAL0 + (int)i};
        if (strcmp(flag, table[i].key) != 0)
            o[k++] = (struct option){table[i].key, arg, NULL, VAL0 + (int)i};
        if (table[i].type == MOE_OPT_BOOL) {
            p += sprintf(p, "no-%s", flag) + 1;
            o[k++] = (struct option){p - strlen(flag) - 4, no_argument, NULL, VAL0 + (int)(n + i)};
        }
    }
    o[k++] = (struct option){"config", required_argument, NULL, VAL0 + (int)(2 * n)};
    o[k++] = (struct option){"help", no_argument, NULL, 'h'};
    return o;
}

/* "unknown option --x (did you mean --y?)", preferring options of `roles`. */
static void unknown_option(const struct moe_opt *table, size_t n, unsigned roles, const char *arg,
                           char *err, size_t errlen)
{
    char name[128];
    const char *start = arg + strspn(arg, "-");
    snprintf(name, sizeof name, "%.*s", (int)strcspn(start, "="), start);
    for (char *q = name; *q; q++)
        *q = *q == '_' ? '-' : *q;
    const char *cand[1024];
    char flags[1024][128];
    size_t m = 0;
    for (int pass = 0; pass < 2 && m == 0; pass++)
        for (size_t i = 0; i < n && m < 1024; i++)
            if (pass == 1 || !roles || (table[i].roles & roles)) {
                key_to_flag(table[i].key, flags[m], sizeof flags[m]);
                cand[m] = flags[m];
                m++;
            }
    const char *near = arg[0] == '-' && arg[1] == '-' ? moe_cli_nearest(name, cand, m) : NULL;
    if (near)
        moe_err_set(err, errlen, "unknown option %s (did you mean --%s?)", arg, near);
    else
        moe_err_set(err, errlen, "unknown option %s (see --help)", arg);
}

/* --config FILE (or =FILE) anywhere on the command line, first. */
static int load_config_flag(const struct moe_opt *table, size_t n, void *cfg, int argc,
                            char **argv, bool *given, char *err, size_t errlen)
{
    for (int i = 1; i < argc; i++) {
        const char *path = NULL;
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc)
                return moe_err_fail(MOE_ERR_CONFIG, err, errlen, "--config: missing file name");
            path = argv[i + 1];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            path = argv[i] + 9;
        }
        int rc = path ? config_load_ini(table, n, cfg, path, given, err, errlen) : 0;
        if (rc)
            return rc;
    }
    return 0;
}

static bool is_bool_word(const char *s)
{
    static const char *const words[] = {"1", "true", "yes", "on", "0", "false", "no", "off"};
    for (int i = 0; s && i < 8; i++)
        if (strcmp(s, words[i]) == 0)
            return true;
    return false;
}

/* One option getopt_long found: index i of the table (or n + i: --no-). */
static int take_option(const struct moe_opt *table, size_t n, void *cfg, int i, int argc,
                       char **argv, bool *given, bool *flagged, char *err, size_t errlen)
{
    const bool negated = (size_t)i >= n;
    const struct moe_opt *o = &table[negated ? (size_t)i - n : (size_t)i];
    char where[140], flag[128];
    key_to_flag(o->key, flag, sizeof flag);
    snprintf(where, sizeof where, "--%s%s", negated ? "no-" : "", flag);
    const char *value = optarg;
    if (negated) {
        value = "false";
    } else if (o->type == MOE_OPT_BOOL && !value) {
        /* "--residual false" as well as "--residual=false" and "--residual" */
        value = optind < argc && is_bool_word(argv[optind]) ? argv[optind++] : "true";
    } else if (value == argv[optind - 1] && strncmp(value, "--", 2) == 0) {
        /* "--valid --steps 3" is a forgotten value, not the value "--steps" */
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "%s: missing value (use %s=VALUE for values starting with --)", where,
                            where);
    }
    if (given)
        given[o - table] = true;
    if (flagged)
        flagged[o - table] = true;
    return parse_value(o, cfg, value, where, err, errlen);
}

int moe_config_parse_args(const struct moe_opt *table, size_t n, void *cfg, int argc,
                          char **argv, unsigned roles, bool *given, bool *flagged, char *err,
                          size_t errlen)
{
    if (given)
        memset(given, 0, sizeof(bool) * n);
    if (flagged)
        memset(flagged, 0, sizeof(bool) * n);
    int rc = moe_config_defaults(table, n, cfg, err, errlen);
    if (rc)
        return rc;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 1;
        if (strcmp(argv[i], "--") == 0)
            return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                                "unexpected argument \"--\" (options start with --)");
    }
    /* The config file first, so that flags override it wherever they are. */
    if ((rc = load_config_flag(table, n, cfg, argc, argv, given, err, errlen)))
        return rc;
    char *names = NULL;
    struct option *lo = long_options(table, n, &names);
    if (!lo) {
        free(names);
        return moe_err_fail(MOE_ERR_NOMEM, err, errlen, "out of memory");
    }
    opterr = 0;
    optind = 0; /* a full reset of GNU getopt (tests parse many times) */
    int c;
    while (rc == 0 && (c = getopt_long(argc, argv, "+:h", lo, NULL)) != -1) {
        if (c == '?')
            unknown_option(table, n, roles, argv[optind - 1], err, errlen), rc = MOE_ERR_CONFIG;
        else if (c == ':')
            rc = moe_err_fail(MOE_ERR_CONFIG, err, errlen, "%s: missing value", argv[optind - 1]);
        else if (c >= VAL0 && c < VAL0 + 2 * (int)n)
            rc = take_option(table, n, cfg, c - VAL0, argc, argv, given, flagged, err, errlen);
        /* VAL0 + 2n: --config, loaded above; 'h': --help, seen above */
    }
    if (rc == 0 && optind < argc)
        rc = moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                          "unexpected argument \"%s\" (options start with --; a value goes with "
                          "its flag, e.g. --lr 0.01 or --lr=0.01)", argv[optind]);
    free(lo);
    free(names);
    return rc;
}

static void format_value(const struct moe_opt *o, const void *cfg, char *buf, size_t cap)
{
    const char *field = (const char *)cfg + o->offset;
    switch (o->type) {
    case MOE_OPT_INT: snprintf(buf, cap, "%d", *(const int *)field); break;
    case MOE_OPT_I64: snprintf(buf, cap, "%lld", (long long)*(const int64_t *)field); break;
    case MOE_OPT_DOUBLE: snprintf(buf, cap, "%.17g", *(const double *)field); break;
    case MOE_OPT_BOOL: snprintf(buf, cap, "%s", *(const bool *)field ? "true" : "false"); break;
    case MOE_OPT_STRING: snprintf(buf, cap, "%s", field); break;
    }
}

int moe_config_format_value(const struct moe_opt *table, size_t n, const void *cfg,
                            const char *key, char *buf, size_t cap)
{
    const struct moe_opt *o = find_opt(table, n, key);
    if (!o)
        return MOE_ERR_NOTFOUND;
    format_value(o, cfg, buf, cap);
    return 0;
}

/* Whether `sec` is one of the comma-separated names of `list`. */
static bool section_listed(const char *list, const char *sec)
{
    size_t len = strlen(sec);
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == len && strncmp(p, sec, len) == 0)
            return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

int moe_config_write_ini(const struct moe_opt *table, size_t n, const void *cfg, FILE *out)
{
    return moe_config_write_ini_except(table, n, cfg, out, NULL);
}

int moe_config_write_ini_except(const struct moe_opt *table, size_t n, const void *cfg, FILE *out,
                                const char *skip)
{
    const char *done[64];
    size_t ndone = 0;
    for (size_t i = 0; i < n; i++) {
        const char *sec = table[i].section;
        bool seen = false;
        for (size_t j = 0; j < ndone; j++)
            seen |= strcmp(done[j], sec) == 0;
        if (seen || ndone == 64 || section_listed(skip, sec))
            continue;
        done[ndone++] = sec;
        fprintf(out, "%s[%s]\n", ndone > 1 ? "\n" : "", sec);
        for (size_t j = i; j < n; j++) {
            if (strcmp(table[j].section, sec) != 0)
                continue;
            char buf[4200];
            format_value(&table[j], cfg, buf, sizeof buf);
            fprintf(out, "%s = %s\n", table[j].key, buf);
        }
    }
    return ferror(out) ? MOE_ERR_IO : 0;
}

/* Section names as headings of --help. */
static const char *section_title(const char *sec)
{
    static const char *const names[][2] = {
        {"data", "Data"},       {"model", "Model"},          {"train", "Training"},
        {"experts", "Experts (their optimizer)"},           {"cluster", "Cluster"},
        {"output", "Checkpoints and output"},               {"operations", "Operations"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(names[i][0], sec) == 0)
            return names[i][1];
    return sec;
}

void moe_config_print_help(const struct moe_opt *table, size_t n, FILE *out, const char *prog,
                           const char *summary, unsigned roles, const char *also)
{
    fprintf(out, "Usage: %s [--config FILE.ini] [--option VALUE | --option=VALUE ...]\n\n%s\n\n",
            prog, summary);
    fprintf(out, "Every option is also an INI key (`key = value`, '_' for '-'); flags override\n"
                 "the file. Exit status: 0 done, 1 failed, 2 wrong command line.\n\n");
    fprintf(out, "  %-30s %s\n", "--config FILE", "read options from an INI file");
    fprintf(out, "  %-30s %s\n", "-h, --help", "print this help and exit");
    const char *done[64];
    size_t ndone = 0;
    for (size_t i = 0; i < n; i++) {
        const char *sec = table[i].section;
        bool seen = false;
        for (size_t j = 0; j < ndone; j++)
            seen |= strcmp(done[j], sec) == 0;
        if (seen || ndone == 64)
            continue;
        done[ndone++] = sec;
        bool header = false;
        for (size_t j = i; j < n; j++) {
            if (strcmp(table[j].section, sec) != 0 || (roles && table[j].roles &&
                                                        !(table[j].roles & roles)))
                continue;
            if (!header)
                fprintf(out, "\n%s:\n", section_title(sec));
            header = true;
            char flag[128], left[160];
            key_to_flag(table[j].key, flag, sizeof flag);
            static const char *const arg[] = {" N", " N", " X", "[=BOOL]", " TEXT"};
            snprintf(left, sizeof left, "--%s%s", flag, arg[table[j].type]);
            fprintf(out, "  %-30s %s (default: %s)\n", left, table[j].help,
                    table[j].def[0] ? table[j].def : "\"\"");
        }
    }
    if (also)
        fprintf(out, "\n%s\n", also);
}
