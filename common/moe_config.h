/* Configuration: one option table per program, read from an INI file and
 * from command-line flags (DESIGN §7).
 *
 * Every key `d_model` of the table is also the flag `--d-model`. Precedence:
 * table default < INI file (given by --config PATH) < flags. INI sections
 * group keys for people; a key is found by name whatever section it is in,
 * but a section no key belongs to and a key given twice are errors. Unknown keys, bad numbers and out-of-range values are errors that name the
 * file and line or the flag (an unknown flag with the nearest known one).
 * Flags are parsed with getopt_long. This module never prints (but for
 * --help) or exits. */
#ifndef MOE_CONFIG_H
#define MOE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum moe_opt_type { MOE_OPT_INT, MOE_OPT_I64, MOE_OPT_DOUBLE, MOE_OPT_BOOL, MOE_OPT_STRING };

struct moe_opt {
    const char *key;     /* snake_case; the flag is --kebab-case */
    const char *section; /* INI section the key is written under */
    enum moe_opt_type type;
    size_t offset;       /* offsetof(config struct, field) */
    size_t size;         /* MOE_OPT_STRING: capacity of the char array */
    double min, max;     /* inclusive bounds for numbers (ignored when min > max) */
    const char *def;     /* default value as text */
    const char *help;
    unsigned roles;      /* the programs that use it (bits the caller defines; 0: all) */
};

/* Sets every field of `cfg` to its default. 0 or MOE_ERR_CONFIG (a bad
 * default is a programmer error, reported anyway). */
int moe_config_defaults(const struct moe_opt *table, size_t n, void *cfg, char *err, size_t errlen);

/* Parses `value` into the field named `key`. `where` names the source in
 * errors: a flag ("--lr") names itself; any other text ("file.ini:12", or
 * "" for none) is followed by the key. 0, MOE_ERR_NOTFOUND or
 * MOE_ERR_CONFIG; on error the field is unchanged. */
int moe_config_set(const struct moe_opt *table, size_t n, void *cfg, const char *key,
                   const char *value, const char *where, char *err, size_t errlen);

/* Reads an INI file into cfg. 0, MOE_ERR_IO (unreadable) or MOE_ERR_CONFIG. */
int moe_config_load_ini(const struct moe_opt *table, size_t n, void *cfg, const char *path,
                        char *err, size_t errlen);

/* The same from INI text in memory; `name` stands for the file in errors;
 * `given` (may be NULL) marks the keys the text sets. */
int moe_config_load_ini_text(const struct moe_opt *table, size_t n, void *cfg, const char *text,
                             const char *name, bool *given, char *err, size_t errlen);

/* Defaults, then --config FILE if present, then every other flag
 * (`--key value`, `--key=value`, `--key_with_underscores` too; a bool flag
 * alone means true, `--no-key` false). Returns 0, 1 when --help was asked
 * for, or a negative code. Positional arguments are errors. An unknown flag
 * names the nearest known one, among the options of `roles` first (0: all).
 * `given` (n entries, may be NULL) marks the keys the file or a flag set,
 * `flagged` (n entries, may be NULL) those a flag set. */
int moe_config_parse_args(const struct moe_opt *table, size_t n, void *cfg, int argc,
                          char **argv, unsigned roles, bool *given, bool *flagged, char *err,
                          size_t errlen);

/* Writes the whole configuration as INI, grouped by section. 0 or MOE_ERR_IO. */
int moe_config_write_ini(const struct moe_opt *table, size_t n, const void *cfg, FILE *out);

/* The same, leaving out the sections named in `skip`, a comma-separated
 * list (NULL: none). */
int moe_config_write_ini_except(const struct moe_opt *table, size_t n, const void *cfg, FILE *out,
                                const char *skip);

/* The value of option `key` of cfg as text (the form the INI writer uses:
 * integers in decimal, doubles with 17 significant digits, true/false,
 * strings as they are) into buf. 0 or MOE_ERR_NOTFOUND. */
int moe_config_format_value(const struct moe_opt *table, size_t n, const void *cfg,
                            const char *key, char *buf, size_t cap);

/* Prints usage, the summary and the options of `roles` (0: all), grouped
 * by section, each with its default; then `also` (may be NULL). */
void moe_config_print_help(const struct moe_opt *table, size_t n, FILE *out, const char *prog,
                           const char *summary, unsigned roles, const char *also);

#endif
