/* Vocabulary, corpus loading and batching (see data.h). */
#include "data.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moe_err.h"
#include "moe_file.h"

struct vocab {
    int n, cap_slots;
    char **words;     /* id -> word */
    int64_t *counts;  /* id -> count (built vocabularies) */
    int32_t *slots;   /* open addressing: id + 1, 0 empty */
    size_t mask;
};

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* A growable word table used while counting and by the final vocabulary. */
struct table {
    char **words;
    int64_t *counts;
    int32_t *slots;
    size_t mask;
    int n, cap;
};

static int table_init(struct table *t, size_t slots)
{
    memset(t, 0, sizeof *t);
    t->slots = calloc(slots, sizeof(int32_t));
    t->mask = slots - 1;
    return t->slots ? 0 : MOE_ERR_NOMEM;
}

static void table_free(struct table *t, bool free_words)
{
    if (free_words)
        for (int i = 0; i < t->n; i++)
            free(t->words[i]);
    free(t->words);
    free(t->counts);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

static int table_find(const struct table *t, const char *w, size_t len)
{
    size_t i = hash_bytes(w, len) & t->mask;
    for (;;) {
        int32_t s = t->slots[i];
        if (s == 0)
            return -1;
        const char *x = t->words[s - 1];
        if (strncmp(x, w, len) == 0 && x[len] == '\0')
            return s - 1;
        i = (i + 1) & t->mask;
    }
}

static int table_grow(struct table *t)
{
    size_t slots = (t->mask + 1) * 2;
    int32_t *ns = calloc(slots, sizeof(int32_t));
    if (!ns)
        return MOE_ERR_NOMEM;
    for (int id = 0; id < t->n; id++) {
        size_t i = hash_bytes(t->words[id], strlen(t->words[id])) & (slots - 1);
        while (ns[i])
            i = (i + 1) & (slots - 1);
        ns[i] = id + 1;
    }
    free(t->slots);
    t->slots = ns;
    t->mask = slots - 1;
    return 0;
}

/* Adds `w` (or finds it); returns its id or a negative code. */
static int table_add(struct table *t, const char *w, size_t len)
{
    int id = table_find(t, w, len);
    if (id >= 0)
        return id;
    if ((size_t)(t->n + 1) * 2 > t->mask + 1 && table_grow(t))
        return MOE_ERR_NOMEM;
    if (t->n == t->cap) {
        int cap = t->cap ? t->cap * 2 : 1024;
        char **nw = realloc(t->words, sizeof(char *) * (size_t)cap);
        if (!nw)
            return MOE_ERR_NOMEM;
        t->words = nw;
        int64_t *nc = realloc(t->counts, sizeof(int64_t) * (size_t)cap);
        if (!nc)
            return MOE_ERR_NOMEM;
        t->counts = nc;
        t->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return MOE_ERR_NOMEM;
    memcpy(copy, w, len);
    copy[len] = '\0';
    id = t->n++;
    t->words[id] = copy;
    t->counts[id] = 0;
    size_t i = hash_bytes(w, len) & t->mask;
    while (t->slots[i])
        i = (i + 1) & t->mask;
    t->slots[i] = id + 1;
    return id;
}

/* Calls fn(word, len) for each token and fn(NULL, 0) at each line end. */
typedef int (*token_fn)(void *ctx, const char *w, size_t len);
static int for_each_token(const char *buf, size_t len, token_fn fn, void *ctx)
{
    size_t i = 0;
    while (i < len) {
        size_t line_end = i;
        while (line_end < len && buf[line_end] != '\n')
            line_end++;
        size_t j = i;
        while (j < line_end) {
            while (j < line_end && is_space(buf[j]))
                j++;
            size_t s = j;
            while (j < line_end && !is_space(buf[j]))
                j++;
            if (j > s) {
                int rc = fn(ctx, buf + s, j - s);
                if (rc)
                    return rc;
            }
        }
        int rc = fn(ctx, NULL, 0);
        if (rc)
            return rc;
        i = line_end + 1;
    }
    return 0;
}

struct count_ctx {
    struct table *t;
    int64_t words;
};

static int count_token(void *vc, const char *w, size_t len)
{
    struct count_ctx *c = vc;
    if (!w)
        return 0;
    int id = table_add(c->t, w, len);
    if (id < 0)
        return id;
    c->t->counts[id]++;
    c->words++;
    return 0;
}

static const struct table *sort_table;
static int cmp_by_count(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    int64_t cx = sort_table->counts[x], cy = sort_table->counts[y];
    if (cx != cy)
        return cx > cy ? -1 : 1;
    return strcmp(sort_table->words[x], sort_table->words[y]);
}

static vocab_t *vocab_from_words(char **words, int64_t *counts, int n)
{
    vocab_t *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    struct table t;
    size_t slots = 16;
    while (slots < (size_t)n * 2 + 2)
        slots *= 2;
    if (table_init(&t, slots)) {
        free(v);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        int id = table_add(&t, words[i], strlen(words[i]));
        if (id < 0 || id != i) { /* duplicate words in a vocab file */
            table_free(&t, true);
            free(v);
            return NULL;
        }
        t.counts[id] = counts ? counts[i] : 0;
    }
    v->n = t.n;
    v->words = t.words;
    v->counts = counts ? t.counts : (free(t.counts), NULL);
    v->slots = t.slots;
    v->mask = t.mask;
    return v;
}

vocab_t *vocab_build(const char *path, int max_size, char *err, size_t errlen)
{
    if (max_size != 0 && max_size < 3) {
        moe_err_set(err, errlen, "vocabulary cap %d is too small (need at least 3)", max_size);
        return NULL;
    }
    size_t len;
    char *buf = moe_file_read_text(path, &len, err, errlen);
    if (!buf)
        return NULL;
    struct table t;
    vocab_t *v = NULL;
    int *order = NULL;
    char **words = NULL;
    int64_t *counts = NULL;
    if (table_init(&t, 1 << 16)) {
        free(buf);
        moe_err_set(err, errlen, "out of memory");
        return NULL;
    }
    struct count_ctx cc = {&t, 0};
    int rc = for_each_token(buf, len, count_token, &cc);
    free(buf);
    if (rc) {
        moe_err_set(err, errlen, "%s: %s", path, moe_strerror(rc));
        goto done;
    }
    if (cc.words == 0) {
        moe_err_set(err, errlen, "%s: corpus is empty (no words)", path);
        goto done;
    }
    /* Special tokens first; a corpus's own "<unk>" counts as unknown. */
    int unk_id = table_find(&t, "<unk>", 5), eos_id = table_find(&t, "<eos>", 5);
    order = malloc(sizeof(int) * (size_t)t.n);
    if (!order)
        goto nomem;
    int m = 0;
    for (int i = 0; i < t.n; i++)
        if (i != unk_id && i != eos_id)
            order[m++] = i;
    sort_table = &t;
    qsort(order, (size_t)m, sizeof(int), cmp_by_count);
    int keep = m;
    if (max_size && keep > max_size - 2)
        keep = max_size - 2;
    words = malloc(sizeof(char *) * (size_t)(keep + 2));
    counts = calloc((size_t)(keep + 2), sizeof(int64_t));
    if (!words || !counts)
        goto nomem;
    words[0] = "<unk>";
    words[1] = "<eos>";
    counts[0] = unk_id >= 0 ? t.counts[unk_id] : 0;
    counts[1] = 0; /* filled by corpus_load; eos count = lines */
    for (int i = 0; i < keep; i++) {
        words[i + 2] = t.words[order[i]];
        counts[i + 2] = t.counts[order[i]];
    }
    for (int i = keep; i < m; i++)
        counts[0] += t.counts[order[i]];
    v = vocab_from_words(words, counts, keep + 2);
    if (!v)
        goto nomem;
    goto done;
nomem:
    moe_err_set(err, errlen, "out of memory building the vocabulary of %s", path);
done:
    free(order);
    free(words);
    free(counts);
    table_free(&t, true);
    return v;
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
         : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Undoes vocab_to_text's %HH in place; false for a malformed escape. */
static bool unescape_word(char *w)
{
    char *o = w;
    for (const char *p = w; *p; p++) {
        if (*p != '%') {
            *o++ = *p;
            continue;
        }
        const int hi = hex_digit(p[1]), lo = hi < 0 ? -1 : hex_digit(p[2]);
        if (lo < 0 || (hi == 0 && lo == 0))
            return false;
        *o++ = (char)(hi * 16 + lo);
        p += 2;
    }
    *o = '\0';
    return *w != '\0';
}

/* Parses vocab.txt's text (buf, len bytes, modified in place); `name`
 * names it in sentences; `percent`: words are %HH-escaped (vocab_to_text). */
static vocab_t *vocab_parse(char *buf, size_t len, const char *name, bool percent, char *err,
                            size_t errlen)
{
    int cap = 1024, n = 0;
    char **words = malloc(sizeof(char *) * (size_t)cap);
    vocab_t *v = NULL;
    if (!words)
        goto out;
    for (size_t i = 0; i < len;) {
        size_t e = i;
        while (e < len && buf[e] != '\n')
            e++;
        if (e == i) {
            moe_err_set(err, errlen, "%s: line %d is empty", name, n + 1);
            goto out;
        }
        for (size_t k = i; k < e; k++) {
            if (is_space(buf[k])) {
                moe_err_set(err, errlen, "%s: line %d contains whitespace", name, n + 1);
                goto out;
            }
        }
        if (n == cap) {
            cap *= 2;
            char **nw = realloc(words, sizeof(char *) * (size_t)cap);
            if (!nw)
                goto out;
            words = nw;
        }
        buf[e] = '\0';
        if (percent && !unescape_word(buf + i)) {
            moe_err_set(err, errlen, "%s: line %d has a malformed %%HH escape", name, n + 1);
            goto out;
        }
        words[n++] = buf + i;
        i = e + 1;
    }
    if (n < 3 || strcmp(words[0], "<unk>") != 0 || strcmp(words[1], "<eos>") != 0) {
        moe_err_set(err, errlen, "%s: not a vocabulary (needs <unk>, <eos>, then words)", name);
        goto out;
    }
    v = vocab_from_words(words, NULL, n);
    if (!v)
        moe_err_set(err, errlen, "%s: duplicate words or out of memory", name);
out:
    free(words);
    return v;
}

vocab_t *vocab_load(const char *path, char *err, size_t errlen)
{
    size_t len;
    char *buf = moe_file_read_text(path, &len, err, errlen);
    if (!buf)
        return NULL;
    vocab_t *v = vocab_parse(buf, len, path, false, err, errlen);
    free(buf);
    return v;
}

/* Length of the valid UTF-8 sequence at s (1..4), or 0. */
static int utf8_len(const unsigned char *s)
{
    if (s[0] < 0x80)
        return 1;
    int n = (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3 : (s[0] & 0xf8) == 0xf0 ? 4 : 0;
    if (n == 0 || (n == 2 && s[0] < 0xc2) || (n == 4 && s[0] > 0xf4))
        return 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((n == 3 && s[0] == 0xe0 && s[1] < 0xa0) || (n == 3 && s[0] == 0xed && s[1] >= 0xa0) ||
        (n == 4 && s[0] == 0xf0 && s[1] < 0x90) || (n == 4 && s[0] == 0xf4 && s[1] >= 0x90))
        return 0;
    return n;
}

char *vocab_to_text(const vocab_t *v)
{
    size_t cap = 1;
    for (int i = 0; i < v->n; i++)
        cap += 3 * strlen(v->words[i]) + 1;
    char *out = malloc(cap), *p = out;
    for (int i = 0; out && i < v->n; i++) {
        const unsigned char *w = (const unsigned char *)v->words[i];
        while (*w) {
            int n = *w == '%' ? 0 : utf8_len(w);
            if (n == 0) {
                p += sprintf(p, "%%%02X", *w);
                w++;
            } else {
                memcpy(p, w, (size_t)n);
                p += n;
                w += n;
            }
        }
        *p++ = '\n';
    }
    if (out)
        *p = '\0';
    return out;
}

vocab_t *vocab_from_text(const char *text, const char *name, char *err, size_t errlen)
{
    char *buf = strdup(text);
    if (!buf) {
        moe_err_set(err, errlen, "%s: out of memory", name);
        return NULL;
    }
    vocab_t *v = vocab_parse(buf, strlen(buf), name, true, err, errlen);
    free(buf);
    return v;
}

int vocab_save(const vocab_t *v, const char *path, char *err, size_t errlen)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) {
        moe_err_set(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        return MOE_ERR_IO;
    }
    for (int i = 0; i < v->n; i++)
        fprintf(f, "%s\n", v->words[i]);
    int bad = ferror(f) | (fflush(f) != 0) | (fsync(fileno(f)) != 0);
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        moe_err_set(err, errlen, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        return MOE_ERR_IO;
    }
    return 0;
}

void vocab_destroy(vocab_t **vp)
{
    if (!vp || !*vp)
        return;
    vocab_t *v = *vp;
    for (int i = 0; i < v->n; i++)
        free(v->words[i]);
    free(v->words);
    free(v->counts);
    free(v->slots);
    free(v);
    *vp = NULL;
}

int vocab_size(const vocab_t *v) { return v->n; }
const char *vocab_word(const vocab_t *v, int id) { return v->words[id]; }
const int64_t *vocab_counts(const vocab_t *v) { return v->counts; }

int32_t vocab_lookup(const vocab_t *v, const char *word, size_t len)
{
    struct table t = {v->words, v->counts, v->slots, v->mask, v->n, v->n};
    int id = table_find(&t, word, len);
    return id < 0 ? VOCAB_UNK : id;
}

struct load_ctx {
    const vocab_t *v;
    int32_t *ids;
    size_t n, cap, n_unk, n_oov, words;
};

static int load_token(void *vc, const char *w, size_t len)
{
    struct load_ctx *c = vc;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 1 << 16;
        int32_t *ni = realloc(c->ids, sizeof(int32_t) * cap);
        if (!ni)
            return MOE_ERR_NOMEM;
        c->ids = ni;
        c->cap = cap;
    }
    int32_t id = VOCAB_EOS;
    if (w) {
        id = vocab_lookup(c->v, w, len);
        c->n_unk += id == VOCAB_UNK;
        /* the corpus's own "<unk>" tokens are in every vocabulary */
        c->n_oov += id == VOCAB_UNK && !(len == 5 && memcmp(w, "<unk>", 5) == 0);
        c->words++;
    }
    c->ids[c->n++] = id;
    return 0;
}

int corpus_load(struct corpus *c, const char *path, const vocab_t *v, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    size_t len;
    char *buf = moe_file_read_text(path, &len, err, errlen);
    if (!buf)
        return MOE_ERR_IO;
    struct load_ctx lc = {v, NULL, 0, 0, 0, 0, 0};
    int rc = for_each_token(buf, len, load_token, &lc);
    free(buf);
    if (rc) {
        free(lc.ids);
        moe_err_set(err, errlen, "%s: %s", path, moe_strerror(rc));
        return rc;
    }
    if (lc.words == 0) {
        free(lc.ids);
        moe_err_set(err, errlen, "%s: corpus is empty (no words)", path);
        return MOE_ERR_EMPTY;
    }
    c->ids = lc.ids;
    c->n = lc.n;
    c->n_unk = lc.n_unk;
    c->n_oov = lc.n_oov;
    return 0;
}

void corpus_free(struct corpus *c)
{
    free(c->ids);
    memset(c, 0, sizeof *c);
}

int batcher_init(struct batcher *b, const struct corpus *c, int B, int T, char *err,
                 size_t errlen)
{
    memset(b, 0, sizeof *b);
    if (B < 1 || T < 1 || c->n < 2 || (c->n - 1) / (size_t)B < (size_t)T) {
        moe_err_set(err, errlen,
                "corpus of %zu tokens is too small for a batch of %d streams x %d steps", c->n, B,
                T);
        return MOE_ERR_RANGE;
    }
    b->ids = c->ids;
    b->B = B;
    b->T = T;
    b->stream_len = (c->n - 1) / (size_t)B;
    b->chunks = (int64_t)(b->stream_len / (size_t)T);
    return 0;
}

int batcher_train(const struct batcher *b, int64_t s, int b0, int nb, int32_t *tok, int32_t *tgt)
{
    const int64_t chunk = s % b->chunks;
    for (int i = 0; i < nb; i++) {
        const size_t base = (size_t)(b0 + i) * b->stream_len + (size_t)chunk * (size_t)b->T;
        for (int t = 0; t < b->T; t++) {
            tok[(size_t)i * b->T + t] = b->ids[base + (size_t)t];
            tgt[(size_t)i * b->T + t] = b->ids[base + (size_t)t + 1];
        }
    }
    return chunk == 0 ? 1 : 0;
}

int64_t batcher_eval_chunks(const struct batcher *b)
{
    return (int64_t)((b->stream_len + (size_t)b->T - 1) / (size_t)b->T);
}

int batcher_eval(const struct batcher *b, int64_t c, int32_t *tok, int32_t *tgt)
{
    const size_t start = (size_t)c * (size_t)b->T;
    size_t T = b->stream_len - start;
    if (T > (size_t)b->T)
        T = (size_t)b->T;
    for (int i = 0; i < b->B; i++) {
        const size_t base = (size_t)i * b->stream_len + start;
        for (size_t t = 0; t < T; t++) {
            tok[(size_t)i * T + t] = b->ids[base + t];
            tgt[(size_t)i * T + t] = b->ids[base + t + 1];
        }
    }
    return (int)T;
}
