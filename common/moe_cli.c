#include "moe_cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

bool moe_cli_long(const char *s, long min, long max, long *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

bool moe_cli_double(const char *s, double min, double max, double *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < min || v > max)
        return false;
    *out = v;
    return true;
}

enum { MAX_LEN = 64 };

int moe_cli_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > MAX_LEN || lb > MAX_LEN)
        return MAX_LEN;
    int row[MAX_LEN + 1];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

const char *moe_cli_nearest(const char *word, const char *const *candidates, size_t n)
{
    const char *best = NULL;
    int best_d = MAX_LEN + 1;
    size_t wl = strlen(word);
    for (size_t i = 0; i < n; i++) {
        int d = moe_cli_distance(word, candidates[i]);
        if (wl >= 3 && strncmp(candidates[i], word, wl) == 0)
            d = 1; /* a prefix: "--check" for "--checkpoint-dir" */
        if (d < best_d) {
            best_d = d;
            best = candidates[i];
        }
    }
    int limit = (int)wl / 3 > 2 ? (int)wl / 3 : 2;
    return best && best_d <= limit ? best : NULL;
}
