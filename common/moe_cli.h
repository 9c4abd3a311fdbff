/* Pieces of one command-line grammar shared by every binary: exit codes,
 * strict number parsing and "did you mean" suggestions. The parsing itself
 * is getopt_long's. No state, no I/O. */
#ifndef MOE_CLI_H
#define MOE_CLI_H

#include <stdbool.h>
#include <stddef.h>

enum {
    MOE_EXIT_OK = 0,
    MOE_EXIT_FAILURE = 1, /* the command was understood but failed */
    MOE_EXIT_USAGE = 2,   /* the command line is wrong: nothing was done */
};

/* Parses all of s as a decimal integer in [min, max]; false for empty,
 * trailing characters, overflow or out of range ("12abc", "", "1e3"). */
bool moe_cli_long(const char *s, long min, long max, long *out);

/* Parses all of s as a finite number in [min, max]. */
bool moe_cli_double(const char *s, double min, double max, double *out);

/* Levenshtein distance of a and b, capped at 64. */
int moe_cli_distance(const char *a, const char *b);

/* The candidate nearest to word when it is near enough to be a typo or a
 * prefix (distance at most 2, or a third of its length), else NULL. */
const char *moe_cli_nearest(const char *word, const char *const *candidates, size_t n);

#endif
