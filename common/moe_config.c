/* Option table, INI files (through inih) and flags (see moe_config.h). */
#include "moe_config.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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
    int rc;
    char msg[512];
};

/* Debian's inih passes no line number to the handler: the error text is
 * kept here and prefixed with the line ini_parse_file() returns. */
static int ini_on_entry(void *user, const char *section, const char *name, const char *value)
{
    struct ini_ctx *c = user;
    (void)section;
    if (c->rc)
        return 0;
    c->rc = moe_config_set(c->table, c->n, c->cfg, name, value ? value : "", "", c->msg,
                           sizeof c->msg);
    if (c->rc == MOE_ERR_NOTFOUND)
        c->rc = MOE_ERR_CONFIG;
    return c->rc == 0;
}

int moe_config_load_ini(const struct moe_opt *table, size_t n, void *cfg, const char *path,
                        char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        moe_err_set(err, errlen, "%s: cannot open config file: %s", path, strerror(errno));
        return MOE_ERR_IO;
    }
    struct ini_ctx c = {table, n, cfg, path, 0, ""};
    int r = ini_parse_file(f, ini_on_entry, &c);
    fclose(f);
    if (c.rc) {
        moe_err_set(err, errlen, "%s:%d: %s", path, r, c.msg);
        return c.rc;
    }
    if (r != 0) {
        moe_err_set(err, errlen, "%s:%d: malformed line (expected key = value or [section])", path, r);
        return MOE_ERR_CONFIG;
    }
    return 0;
}

/* "--d-model" -> "d_model" into buf; returns false when too long. */
static bool flag_to_key(const char *flag, char *buf, size_t cap)
{
    size_t len = strlen(flag);
    if (len >= cap)
        return false;
    for (size_t i = 0; i <= len; i++)
        buf[i] = flag[i] == '-' ? '_' : flag[i];
    return true;
}

int moe_config_parse_args(const struct moe_opt *table, size_t n, void *cfg, int argc,
                          char **argv, char *err, size_t errlen)
{
    int rc = moe_config_defaults(table, n, cfg, err, errlen);
    if (rc)
        return rc;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 1;
    /* The config file first, so that flags override it wherever they are. */
    for (int i = 1; i < argc; i++) {
        const char *path = NULL;
        if (strcmp(argv[i], "--config") == 0) {
            if (i + 1 >= argc) {
                moe_err_set(err, errlen, "--config: missing file name");
                return MOE_ERR_CONFIG;
            }
            path = argv[i + 1];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            path = argv[i] + 9;
        }
        if (path && (rc = moe_config_load_ini(table, n, cfg, path, err, errlen)))
            return rc;
    }
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            moe_err_set(err, errlen, "unexpected argument \"%s\" (options start with --)", arg);
            return MOE_ERR_CONFIG;
        }
        char name[128];
        const char *eq = strchr(arg + 2, '=');
        size_t nlen = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        if (nlen >= sizeof name) {
            moe_err_set(err, errlen, "option name too long: %.40s...", arg);
            return MOE_ERR_CONFIG;
        }
        memcpy(name, arg + 2, nlen);
        name[nlen] = '\0';
        if (strcmp(name, "config") == 0) {
            if (!eq)
                i++;
            continue;
        }
        char key[128];
        flag_to_key(name, key, sizeof key);
        char where[160];
        snprintf(where, sizeof where, "--%s", name);
        const struct moe_opt *o = find_opt(table, n, key);
        const char *value = eq ? eq + 1 : NULL;
        if (!o && !value && strncmp(key, "no_", 3) == 0) {
            o = find_opt(table, n, key + 3);
            if (o && o->type == MOE_OPT_BOOL) {
                rc = parse_value(o, cfg, "false", where, err, errlen);
                if (rc)
                    return rc;
                continue;
            }
            o = NULL;
        }
        if (!o) {
            moe_err_set(err, errlen, "unknown option --%s (see --help)", name);
            return MOE_ERR_CONFIG;
        }
        if (!value) {
            if (o->type == MOE_OPT_BOOL && (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)) {
                value = "true";
            } else if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0) {
                /* "--valid --steps 3" is a forgotten value, not the value "--steps" */
                moe_err_set(err, errlen, "--%s: missing value (use --%s=VALUE for values starting with --)",
                        name, name);
                return MOE_ERR_CONFIG;
            } else {
                value = argv[++i];
            }
        }
        rc = parse_value(o, cfg, value, where, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
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

void moe_config_print_help(const struct moe_opt *table, size_t n, FILE *out, const char *prog,
                           const char *summary)
{
    fprintf(out, "Usage: %s [--config FILE.ini] [--option value ...]\n\n%s\n\n", prog, summary);
    fprintf(out, "Every option can also be set in the INI file as `key = value` (key = the\n"
                 "option name with '_' for '-'); flags override the file.\n\n");
    fprintf(out, "  %-28s %s\n", "--config FILE", "read options from an INI file");
    fprintf(out, "  %-28s %s\n", "--help", "print this help and exit");
    const char *sec = "";
    for (size_t i = 0; i < n; i++) {
        if (strcmp(sec, table[i].section) != 0) {
            sec = table[i].section;
            fprintf(out, "\n[%s]\n", sec);
        }
        char flag[128];
        size_t k = 0;
        for (const char *p = table[i].key; *p && k + 1 < sizeof flag; p++)
            flag[k++] = *p == '_' ? '-' : *p;
        flag[k] = '\0';
        char left[160];
        snprintf(left, sizeof left, "--%s%s", flag,
                 table[i].type == MOE_OPT_BOOL ? "[=BOOL]" : " VALUE");
        fprintf(out, "  %-28s %s (default: %s)\n", left, table[i].help,
                table[i].def[0] ? table[i].def : "\"\"");
    }
}
