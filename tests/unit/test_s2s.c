/* Unit tests of the translation model's data and decoding (issue 19):
 * parallel corpora (pairs, <eos>, the one-sentence refusals), length-sorted
 * buckets (every pair once, sorted, padding, <eos> y1..yn against
 * y1..yn <eos>, an epoch order that is a permutation and a pure function
 * of seed and epoch), and beam search (beam 1 is the argmax loop; a
 * beam's returned score is its words' log-probability under the decoder,
 * fed one word at a time, over GNMT's length penalty; the same result
 * twice). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "moe_err.h"
#include "moe_options.h"
#include "parallel.h"
#include "s2s_beam.h"
#include "s2s_checkpoint.h"
#include "test_util.h"

Suite *test_s2s_suite(void);

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* A temporary folder with the paths of two files in it. */
struct files {
    char dir[256], s[300], t[300];
};

static void files_init(struct files *f)
{
    tu_tmpdir(f->dir, sizeof f->dir);
    snprintf(f->s, sizeof f->s, "%s/s", f->dir);
    snprintf(f->t, sizeof f->t, "%s/t", f->dir);
}

static vocab_t *vocab_of(const char *words)
{
    char err[256];
    vocab_t *v = vocab_from_text(words, "test", err, sizeof err);
    ck_assert_msg(v != NULL, "%s", err);
    return v;
}

START_TEST(pcorpus_pairs_and_refusals)
{
    struct files f;
    char err[512];
    files_init(&f);
    const char *s = f.s, *t = f.t;
    vocab_t *v = vocab_of("<unk>\n<eos>\na\nb\nc\n");
    struct pcorpus c;
    write_file(s, "a b\nc\nb b b\n");
    write_file(t, "c\na zz\nb");   /* no final newline: still 3 lines */
    ck_assert_int_eq(pcorpus_load(&c, s, t, v, v, 3, err, sizeof err), 0);
    ck_assert_int_eq(c.n, 3);
    ck_assert_int_eq(pcorpus_src_len(&c, 0), 3);
    ck_assert_int_eq(pcorpus_tgt_len(&c, 1), 3);
    const int32_t want_t1[3] = {2, VOCAB_UNK, VOCAB_EOS};
    ck_assert_int_eq(memcmp(c.tgt + c.tgt_off[1], want_t1, sizeof want_t1), 0);
    ck_assert_int_eq(c.tgt_unk, 1);
    pcorpus_free(&c);
    write_file(t, "c\na\n");
    ck_assert_int_eq(pcorpus_load(&c, s, t, v, v, 3, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err, "has 3 lines and"));
    write_file(t, "c\n \t\nb\n");
    ck_assert_int_eq(pcorpus_load(&c, s, t, v, v, 3, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err, "/t: line 2 is empty"));
    write_file(t, "c\na\nb\n");
    ck_assert_int_eq(pcorpus_load(&c, s, t, v, v, 2, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err, "/s: line 3 has 3 tokens, more than --max-len 2"));
    ck_assert_ptr_null(c.src);
    vocab_destroy(&v);
    tu_rmtree(f.dir);
}
END_TEST

START_TEST(pbatches_sorted_padded_permuted)
{
    struct files f;
    char err[512];
    files_init(&f);
    const char *s = f.s, *t = f.t;
    vocab_t *v = vocab_of("<unk>\n<eos>\na\nb\nc\n");
    /* 7 pairs of source lengths 3 1 2 1 3 2 1 (words) */
    write_file(s, "a b c\na\nb c\nc\na a a\nb b\nb\n");
    write_file(t, "a\nb b\nc\na b c\nb\nc c\na\n");
    struct pcorpus c;
    ck_assert_int_eq(pcorpus_load(&c, s, t, v, v, 5, err, sizeof err), 0);
    struct pbatches b;
    struct pbatch p;
    ck_assert_int_eq(pbatches_init(&b, &c, 3), 0);
    ck_assert_int_eq(pbatch_init(&p, 3, 5), 0);
    ck_assert_int_eq(b.n_batches, 3);
    /* sorted by (source length, target length, line) */
    const int want[7] = {6, 1, 3, 2, 5, 0, 4};
    ck_assert_int_eq(memcmp(b.order, want, sizeof want), 0);
    pbatches_fill(&b, &c, 0, &p); /* pairs 6, 1, 3 */
    ck_assert_int_eq(p.B, 3);
    ck_assert_int_eq(p.S, 2);
    ck_assert_int_eq(p.T, 4);
    const int32_t src[6] = {3, VOCAB_EOS, 2, VOCAB_EOS, 4, VOCAB_EOS};
    ck_assert_int_eq(memcmp(p.src, src, sizeof src), 0);
    /* pair 3: "a b c" -> in <eos> a b c, out a b c <eos> */
    const int32_t tin[4] = {VOCAB_EOS, 2, 3, 4}, tout[4] = {2, 3, 4, VOCAB_EOS};
    ck_assert_int_eq(memcmp(p.tgt_in + 2 * p.T, tin, sizeof tin), 0);
    ck_assert_int_eq(memcmp(p.tgt_out + 2 * p.T, tout, sizeof tout), 0);
    /* pair 6: "a" -> padding 0 after <eos> a / a <eos> */
    const int32_t tin6[4] = {VOCAB_EOS, 2, 0, 0}, tout6[4] = {2, VOCAB_EOS, 0, 0};
    ck_assert_int_eq(memcmp(p.tgt_in, tin6, sizeof tin6), 0);
    ck_assert_int_eq(memcmp(p.tgt_out, tout6, sizeof tout6), 0);
    ck_assert_int_eq(p.tgt_len[0], 2);
    ck_assert_int_eq(p.tokens, 2 + 3 + 4);
    pbatches_fill(&b, &c, 2, &p); /* the last batch: pair 4 alone */
    ck_assert_int_eq(p.B, 1);
    /* an epoch visits every batch once, in an order of (seed, epoch) */
    int seen[2][3];
    for (int e = 0; e < 2; e++) {
        int hit[3] = {0};
        for (int i = 0; i < 3; i++) {
            pbatches_fill_step(&b, &c, e * 3 + i, 7, &p);
            seen[e][i] = b.perm[i];
            hit[b.perm[i]]++;
        }
        ck_assert(hit[0] == 1 && hit[1] == 1 && hit[2] == 1);
    }
    struct pbatches b2;
    ck_assert_int_eq(pbatches_init(&b2, &c, 3), 0);
    pbatches_fill_step(&b2, &c, 4, 7, &p);
    ck_assert_int_eq(memcmp(b2.perm, seen[1], sizeof seen[1]), 0);
    pbatches_free(&b2);
    pbatches_free(&b);
    pbatch_free(&p);
    pcorpus_free(&c);
    vocab_destroy(&v);
    tu_rmtree(f.dir);
}
END_TEST

/* ------------------------------------------------------------ decoding */

static void model_init(struct s2s_model *x, int B_max)
{
    static struct moe_options c;
    char err[512];
    ck_assert_int_eq(moe_config_defaults(moe_options_table, moe_options_count, &c, err, sizeof err), 0);
    c.d_model = 8;
    c.d_hidden = 12;
    c.n_experts = 4;
    c.k = 2;
    c.seed = 5;
    vocab_t *vs = vocab_of("<unk>\n<eos>\na\nb\nc\nd\n");
    vocab_t *vt = vocab_of("<unk>\n<eos>\nw\nx\ny\nz\nq\n");
    ck_assert_int_eq(s2s_model_init(x, &c, &vs, &vt, B_max, 8, 1, false, err, sizeof err), 0);
    /* gates and the softmax bias away from zero; <eos> likely enough that
     * some hypotheses finish */
    for (int i = 0, n = 0; i < s2s_n_params(x->m); i++) {
        const struct layer_param p = s2s_param_at(x->m, i);
        /* every parameter larger than at initialisation: probabilities
         * that depend strongly on the words so far, so that the best
         * hypotheses change rows (and reordering the state matters) */
        tu_fill(p.w->data, p.w->numel, 400u + (uint32_t)n++, strstr(p.name, "bias") ? 1.0f : 1.5f);
    }
    s2s_param_named(x->m, "decoder.softmax.bias").w->data[VOCAB_EOS] = -1.0f;
}

/* log P(words [+ <eos>]) fed one word at a time to one hypothesis. */
static double logp_of(s2s_t *m, const int32_t *src, int len, const int32_t *w, int n, bool eos)
{
    char err[256];
    ck_assert_int_eq(s2s_decode_begin(m, src, len, 1, err, sizeof err), 0);
    int32_t tok = VOCAB_EOS;
    double lp = 0;
    for (int t = 0; t <= n; t++) {
        const float *p = s2s_decode_step(m, &tok, err, sizeof err);
        if (t == n) {
            if (eos)
                lp += log((double)p[VOCAB_EOS]);
            break;
        }
        lp += log((double)p[w[t]]);
        tok = w[t];
    }
    return lp;
}

START_TEST(beam_one_is_greedy)
{
    struct s2s_model x;
    model_init(&x, 4);
    const int32_t src[4] = {2, 5, 3, VOCAB_EOS};
    const struct s2s_beam_opts o = {1, 10, 0.6};
    int32_t out[10], ref[10];
    int len, n = 0;
    double score;
    char err[256];
    ck_assert_int_eq(s2s_beam_translate(x.m, src, 4, &o, out, &len, &score, err, sizeof err), 0);
    ck_assert_int_eq(s2s_decode_begin(x.m, src, 4, 1, err, sizeof err), 0);
    int32_t tok = VOCAB_EOS;
    for (int t = 0; t < 10; t++) {
        const float *p = s2s_decode_step(x.m, &tok, err, sizeof err);
        int best = 0;
        for (int w = 1; w < 7; w++)
            best = p[w] > p[best] ? w : best;
        if (best == VOCAB_EOS)
            break;
        ref[n++] = tok = best;
    }
    ck_assert_int_eq(len, n);
    ck_assert_int_eq(memcmp(out, ref, sizeof(int32_t) * (size_t)n), 0);
    s2s_model_free(&x);
}
END_TEST

START_TEST(beam_score_is_its_log_probability)
{
    struct s2s_model x;
    model_init(&x, 4);
    char err[256];
    int finished = 0;
    for (int k = 2; k <= 4; k++)
        for (int s = 0; s < 8; s++) {
            const int32_t src[4] = {2 + s % 4, 5 - s % 3, 3, VOCAB_EOS};
            const struct s2s_beam_opts o = {k, 8, 0.5 * (s % 3)};
            int32_t out[8], out2[8];
            int len, len2;
            double score, score2;
            ck_assert_int_eq(s2s_beam_translate(x.m, src, 4, &o, out, &len, &score, err, sizeof err), 0);
            ck_assert_int_eq(s2s_beam_translate(x.m, src, 4, &o, out2, &len2, &score2, err, sizeof err), 0);
            ck_assert_int_eq(len, len2);
            ck_assert(score == score2 && !memcmp(out, out2, sizeof(int32_t) * (size_t)len));
            const bool eos = len < o.max_len;
            finished += eos;
            const int ylen = eos ? len + 1 : len;
            const double lp = pow((5.0 + ylen) / 6.0, o.alpha);
            const double want = logp_of(x.m, src, 4, out, len, eos) / lp;
            ck_assert_msg(fabs(score - want) < 1e-4 * fabs(want), "beam %d: score %g, words %g", k,
                          score, want);
        }
    ck_assert_int_gt(finished, 0);
    s2s_model_free(&x);
}
END_TEST

Suite *test_s2s_suite(void)
{
    Suite *s = suite_create("s2s");
    TCase *tc = tcase_create("s2s");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, pcorpus_pairs_and_refusals);
    tcase_add_test(tc, pbatches_sorted_padded_permuted);
    tcase_add_test(tc, beam_one_is_greedy);
    tcase_add_test(tc, beam_score_is_its_log_probability);
    suite_add_tcase(s, tc);
    return s;
}
