/* Unit tests for common/moe_manifest: the streamed file checksum equals
 * moe_checksum64 over the whole file at every chunk boundary; manifests
 * round-trip, and malformed ones (bad JSON, another format, an expert index
 * out of range, a file name with '/', ...) give errors naming the manifest;
 * verify names a file with a flipped byte, a truncated or a missing file;
 * latest() skips a corrupted newest checkpoint and folders without a
 * manifest; prune keeps exactly the newest `keep` committed checkpoints and
 * never touches a newer uncommitted folder; export of the same tensors split
 * over one or two server files, listed and written in different orders, is
 * byte-identical, sorted, without per-worker state, and --params-only drops
 * the optimizer state; a duplicated or missing expert is an error. Each test
 * works in its own mkdtemp directory, removed by the fixture. */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "expert_shard.h"
#include "moe_checksum.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_manifest.h"
#include "moectl_export.h"
#include "moe_safetensors.h"
#include "test_util.h"

Suite *test_manifest_suite(void);

enum { E = 4, D = 4, H = 6, MAXT = 64 };

static char tmp[256];

static void setup(void)
{
    tu_tmpdir(tmp, sizeof tmp);
    moe_log_set_level(MOE_LOG_ERROR); /* latest/prune log skipped folders */
}

static void teardown(void)
{
    tu_rmtree(tmp);
}

/* ------------------------------------------------------------------------ */
/* Helpers */

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

static void spill(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static void flip_byte(const char *path, long at)
{
    size_t n;
    unsigned char *b = slurp(path, &n);
    ck_assert_int_lt(at, (long)n);
    b[at] ^= 0x40;
    spill(path, b, n);
    free(b);
}

static bool exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* A list of F32 tensors whose values depend on the name only. */
struct tb {
    struct moe_st_entry e[MAXT];
    char names[MAXT][96];
    float *data[MAXT];
    int n;
};

static void tb_add(struct tb *t, const char *name, int nd, int64_t d0, int64_t d1)
{
    ck_assert_int_lt(t->n, MAXT);
    size_t numel = (size_t)d0 * (nd == 2 ? (size_t)d1 : 1);
    snprintf(t->names[t->n], 96, "%s", name);
    t->data[t->n] = malloc(sizeof(float) * (numel ? numel : 1));
    ck_assert_ptr_nonnull(t->data[t->n]);
    tu_fill(t->data[t->n], numel,
            (uint32_t)moe_checksum64(MOE_CHECKSUM_INIT, name, strlen(name)), 1.0f);
    t->e[t->n] = (struct moe_st_entry){t->names[t->n], nd, {d0, d1}, t->data[t->n]};
    t->n++;
}

static void tb_write(struct tb *t, const char *path, bool reversed, const char *const *meta)
{
    struct moe_st_entry e[MAXT];
    for (int i = 0; i < t->n; i++)
        e[i] = t->e[reversed ? t->n - 1 - i : i];
    char err[512] = "";
    ck_assert_msg(moe_safetensors_write(path, e, (size_t)t->n, meta, err, sizeof err) == 0, "%s",
                  err);
    for (int i = 0; i < t->n; i++)
        free(t->data[i]);
    t->n = 0;
}

static void add_expert(struct tb *t, int id, bool with_state)
{
    for (int part = 0; part < EXPERT_PARTS; part++) {
        const char *suffix;
        int nd;
        int64_t shape[2];
        size_t nst;
        expert_shard_part(part, D, H, &suffix, &nd, shape, &nst);
        char name[96];
        snprintf(name, sizeof name, "moe.experts.%d.%s", id, suffix);
        tb_add(t, name, nd, shape[0], shape[1]);
        if (with_state) {
            snprintf(name, sizeof name, "moe.experts.%d.%s.fadam", id, suffix);
            tb_add(t, name, 1, (int64_t)nst, 0);
        }
    }
}

static void add_state(struct tb *t)
{
    static const char *const names[] = {"state.lstm1.h", "state.lstm1.c", "state.lstm2.h",
                                        "state.lstm2.c"};
    for (int i = 0; i < 4; i++)
        tb_add(t, names[i], 2, 2, D);
}

/* Dense parameters and their optimizer state (rank 0's file). */
enum { N_DENSE = 4, N_DENSE_OPT = 6 };
static void add_dense(struct tb *t)
{
    tb_add(t, "embedding.weight", 2, 10, D);
    tb_add(t, "embedding.weight.adam_m", 1, 10 * D, 0);
    tb_add(t, "embedding.weight.adam_v", 1, 10 * D, 0);
    tb_add(t, "lstm1.weight_ih_l0", 2, 4 * D, D);
    tb_add(t, "lstm1.weight_ih_l0.adam_m", 1, 16 * D, 0);
    tb_add(t, "lstm1.weight_ih_l0.adam_v", 1, 16 * D, 0);
    tb_add(t, "softmax.weight", 2, 10, D);
    tb_add(t, "softmax.weight.fadam", 1, 10 + D, 0);
    tb_add(t, "softmax.bias", 1, 10, 0);
    tb_add(t, "softmax.bias.fadam", 1, 10, 0);
}

struct layout {
    int n_servers;
    int srv[E];      /* server of each expert */
    bool reversed;   /* files listed, and tensors handed to the writer, in reverse */
    int dup;         /* an expert also written to the next server, or -1 */
    int skip;        /* an expert left out, or -1 */
};

static const struct layout ONE = {1, {0, 0, 0, 0}, false, -1, -1};
static const struct layout TWO = {2, {1, 0, 1, 0}, true, -1, -1};

/* Writes a committed checkpoint of 2 workers and L's servers into
 * dir/step-%08lld; the folder's path goes to folder (512 bytes). */
static void make_ckpt(const char *dir, int64_t step, const struct layout *L, char *folder)
{
    char path[600], err[512] = "", sidx[16];
    mkdir(dir, 0755);
    moe_manifest_folder(dir, step, folder, 512);
    ck_assert_int_eq(mkdir(folder, 0755), 0);
    struct tb *t = calloc(1, sizeof *t);
    ck_assert_ptr_nonnull(t);
    add_dense(t);
    add_state(t);
    snprintf(path, sizeof path, "%s/worker-0.safetensors", folder);
    tb_write(t, path, L->reversed, NULL);
    add_state(t);
    snprintf(path, sizeof path, "%s/worker-1.safetensors", folder);
    tb_write(t, path, L->reversed, NULL);
    for (int s = 0; s < L->n_servers; s++) {
        for (int k = 0; k < E; k++) {
            int e = L->reversed ? E - 1 - k : k;
            if (e != L->skip &&
                (L->srv[e] == s || (e == L->dup && (L->srv[e] + 1) % L->n_servers == s)))
                add_expert(t, e, true);
        }
        snprintf(path, sizeof path, "%s/server-%d.safetensors", folder, s);
        snprintf(sidx, sizeof sidx, "%d", s);
        const char *meta[] = {"format", "moe-shard-1", "server", sidx, NULL};
        tb_write(t, path, L->reversed, meta);
    }
    free(t);

    const int nf = 2 + L->n_servers;
    struct moe_manifest m = {.step = step, .epoch = 1, .placement_version = 3, .n_experts = E,
                             .d_model = D, .d_hidden = H, .workers = 2, .n_files = nf};
    m.files = calloc((size_t)nf, sizeof *m.files);
    m.expert_file = calloc(E, sizeof *m.expert_file);
    ck_assert_ptr_nonnull(m.files);
    ck_assert_ptr_nonnull(m.expert_file);
    for (int i = 0; i < nf; i++) {
        int k = L->reversed ? nf - 1 - i : i;
        if (k < 2)
            snprintf(m.files[i].name, sizeof m.files[i].name, "worker-%d.safetensors", k);
        else
            snprintf(m.files[i].name, sizeof m.files[i].name, "server-%d.safetensors", k - 2);
        snprintf(path, sizeof path, "%s/%s", folder, m.files[i].name);
        ck_assert_msg(moe_manifest_file_checksum(path, &m.files[i].checksum, &m.files[i].bytes,
                                                 err, sizeof err) == 0,
                      "%s", err);
    }
    for (int e = 0; e < E; e++)
        m.expert_file[e] = L->reversed ? nf - 1 - (2 + L->srv[e]) : 2 + L->srv[e];
    ck_assert_msg(moe_manifest_write(folder, &m, err, sizeof err) == 0, "%s", err);
    moe_manifest_free(&m);
}

/* A valid manifest as JSON, to be broken by the malformed-manifest test. */
static json_t *valid_json(void)
{
    json_error_t je;
    json_t *j = json_loads(
        "{\"format\":\"moe-cluster-checkpoint-1\",\"step\":12,\"epoch\":0,"
        "\"placement_version\":1,\"n_experts\":3,\"d_model\":4,\"d_hidden\":6,\"workers\":1,"
        "\"files\":[{\"name\":\"worker-0.safetensors\",\"bytes\":100,"
        "\"checksum\":\"0123456789abcdef\"},"
        "{\"name\":\"server-0.safetensors\",\"bytes\":200,\"checksum\":\"fedcba9876543210\"}],"
        "\"experts\":[1,1,1]}",
        0, &je);
    ck_assert_msg(j != NULL, "%s", je.text);
    return j;
}

/* ------------------------------------------------------------------------ */
/* Checksums and the folder name */

START_TEST(manifest_checksum_streams)
{
    const size_t C = (size_t)1 << 20;
    const size_t sizes[] = {0, 1, 7, 8, 9, 15, 16, 4095, C - 1, C, C + 1, C + 7, C + 8,
                            2 * C + 13, 3 * C};
    unsigned char *buf = malloc(3 * C + 16);
    ck_assert_ptr_nonnull(buf);
    for (size_t i = 0; i < 3 * C + 16; i++)
        buf[i] = (unsigned char)(i * 2654435761u >> 13);
    char path[512], err[512] = "";
    snprintf(path, sizeof path, "%s/blob", tmp);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        spill(path, buf, sizes[k]);
        uint64_t sum = 0, bytes = 1;
        ck_assert_msg(moe_manifest_file_checksum(path, &sum, &bytes, err, sizeof err) == 0, "%s",
                      err);
        ck_assert_uint_eq(bytes, sizes[k]);
        ck_assert_msg(sum == moe_checksum64(MOE_CHECKSUM_INIT, buf, sizes[k]),
                      "streamed checksum differs from moe_checksum64 at %zu bytes", sizes[k]);
    }
    free(buf);
    snprintf(path, sizeof path, "%s/absent", tmp);
    uint64_t sum, bytes;
    ck_assert_int_eq(moe_manifest_file_checksum(path, &sum, &bytes, err, sizeof err),
                     MOE_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err, path));

    char folder[64];
    moe_manifest_folder("ck", 12, folder, sizeof folder);
    ck_assert_str_eq(folder, "ck/step-00000012");
    moe_manifest_folder("ck", 123456789, folder, sizeof folder);
    ck_assert_str_eq(folder, "ck/step-123456789");
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Write and read */

START_TEST(manifest_round_trip)
{
    struct moe_manifest m = {.step = 12, .epoch = 4000000000u, .placement_version = 7,
                             .n_experts = 5, .d_model = 512, .d_hidden = 1024, .workers = 2,
                             .n_files = 3};
    struct moe_manifest_file files[3] = {
        {"worker-0.safetensors", 123456789012ull, 0xfedcba9876543210ull},
        {"worker-1.safetensors", 0, 0},
        {"server-0.safetensors", 42, 0x0123456789abcdefull}};
    int ef[5] = {2, 2, 0, 1, 2};
    m.files = files;
    m.expert_file = ef;
    char err[512] = "";
    ck_assert_msg(moe_manifest_write(tmp, &m, err, sizeof err) == 0, "%s", err);
    /* nothing but the manifest is left in the folder (no temp file) */
    char path[512];
    snprintf(path, sizeof path, "%s/manifest.json", tmp);
    ck_assert(exists(path));
    DIR *d = opendir(tmp);
    ck_assert_ptr_nonnull(d);
    int entries = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        entries += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
    closedir(d);
    ck_assert_int_eq(entries, 1);
    struct moe_manifest r;
    ck_assert_msg(moe_manifest_read(tmp, &r, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(r.step, 12);
    ck_assert_uint_eq(r.epoch, 4000000000u);
    ck_assert_uint_eq(r.placement_version, 7);
    ck_assert_int_eq(r.n_experts, 5);
    ck_assert_int_eq(r.d_model, 512);
    ck_assert_int_eq(r.d_hidden, 1024);
    ck_assert_int_eq(r.workers, 2);
    ck_assert_int_eq(r.n_files, 3);
    for (int i = 0; i < 3; i++) {
        ck_assert_str_eq(r.files[i].name, files[i].name);
        ck_assert_uint_eq(r.files[i].bytes, files[i].bytes);
        ck_assert(r.files[i].checksum == files[i].checksum);
    }
    for (int e = 0; e < 5; e++)
        ck_assert_int_eq(r.expert_file[e], ef[e]);
    /* the checksum is written as 16 hex digits */
    size_t n;
    char *text = (char *)slurp(path, &n);
    text[n] = '\0';
    ck_assert_ptr_nonnull(strstr(text, "\"fedcba9876543210\""));
    ck_assert_ptr_nonnull(strstr(text, "\"0000000000000000\""));
    ck_assert_ptr_nonnull(strstr(text, "\"moe-cluster-checkpoint-1\""));
    free(text);
    moe_manifest_free(&r);
    ck_assert_ptr_null(r.files);
    moe_manifest_free(&r); /* idempotent */

    /* a rewrite replaces it */
    m.step = 13;
    ck_assert_msg(moe_manifest_write(tmp, &m, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(moe_manifest_read(tmp, &r, err, sizeof err), 0);
    ck_assert_int_eq(r.step, 13);
    moe_manifest_free(&r);

    /* an invalid manifest is not written (and the old one stays) */
    snprintf(files[1].name, sizeof files[1].name, "../worker-1.safetensors");
    ck_assert_int_eq(moe_manifest_write(tmp, &m, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(err, "manifest.json"));
    ck_assert_ptr_nonnull(strstr(err, "../worker-1.safetensors"));
    snprintf(files[1].name, sizeof files[1].name, "worker-1.safetensors");
    ef[3] = 3;
    ck_assert_int_eq(moe_manifest_write(tmp, &m, err, sizeof err), MOE_ERR_RANGE);
    ck_assert_ptr_nonnull(strstr(err, "experts[3]"));
    ck_assert_int_eq(moe_manifest_read(tmp, &r, err, sizeof err), 0);
    ck_assert_int_eq(r.step, 13);
    ck_assert_int_eq(r.expert_file[3], 1);
    moe_manifest_free(&r);
}
END_TEST

struct bad_case {
    const char *what;
    int rc;
    const char *in_err; /* a fragment the error must contain besides the path */
};

/* Breaks a valid manifest in case k; returns the JSON text or NULL if k is
 * past the last case. */
static char *broken(int k, struct bad_case *c)
{
    if (k == 0) {
        *c = (struct bad_case){"bad JSON", MOE_ERR_FORMAT, "not valid JSON"};
        return strdup("{\"format\": \"moe-cluster-checkpoint-1\", \"step\": ");
    }
    json_t *j = valid_json(), *files = json_object_get(j, "files");
    json_t *f0 = json_array_get(files, 0);
    switch (k) {
    case 1:
        *c = (struct bad_case){"another format", MOE_ERR_FORMAT, "moe-shard-1"};
        json_object_set_new(j, "format", json_string("moe-shard-1"));
        break;
    case 2:
        *c = (struct bad_case){"another version", MOE_ERR_VERSION, "moe-cluster-checkpoint-2"};
        json_object_set_new(j, "format", json_string("moe-cluster-checkpoint-2"));
        break;
    case 3:
        *c = (struct bad_case){"expert index out of range", MOE_ERR_RANGE, "experts[2] is 2"};
        json_array_set_new(json_object_get(j, "experts"), 2, json_integer(2));
        break;
    case 4:
        *c = (struct bad_case){"negative expert index", MOE_ERR_RANGE, "experts[0] is -1"};
        json_array_set_new(json_object_get(j, "experts"), 0, json_integer(-1));
        break;
    case 5:
        *c = (struct bad_case){"name with '/'", MOE_ERR_FORMAT, "sub/worker-0.safetensors"};
        json_object_set_new(f0, "name", json_string("sub/worker-0.safetensors"));
        break;
    case 6:
        *c = (struct bad_case){"name \"..\"", MOE_ERR_FORMAT, "\"..\""};
        json_object_set_new(f0, "name", json_string(".."));
        break;
    case 7:
        *c = (struct bad_case){"file listed twice", MOE_ERR_FORMAT, "listed twice"};
        json_object_set_new(f0, "name", json_string("server-0.safetensors"));
        break;
    case 8:
        *c = (struct bad_case){"checksum not hex", MOE_ERR_FORMAT, "checksum"};
        json_object_set_new(f0, "checksum", json_string("0123456789abcdeg"));
        break;
    case 9:
        *c = (struct bad_case){"checksum as a number", MOE_ERR_FORMAT, "checksum"};
        json_object_set_new(f0, "checksum", json_integer(12345));
        break;
    case 10:
        *c = (struct bad_case){"negative size", MOE_ERR_RANGE, "\"bytes\" is -1"};
        json_object_set_new(f0, "bytes", json_integer(-1));
        break;
    case 11:
        *c = (struct bad_case){"missing key", MOE_ERR_FORMAT, "\"d_model\""};
        json_object_del(j, "d_model");
        break;
    case 12:
        *c = (struct bad_case){"step as a string", MOE_ERR_FORMAT, "\"step\""};
        json_object_set_new(j, "step", json_string("12"));
        break;
    case 13:
        *c = (struct bad_case){"expert list too short", MOE_ERR_FORMAT, "n_experts (3)"};
        json_array_remove(json_object_get(j, "experts"), 0);
        break;
    case 14:
        *c = (struct bad_case){"no files", MOE_ERR_FORMAT, "\"files\""};
        json_array_clear(files);
        break;
    case 15:
        *c = (struct bad_case){"zero experts", MOE_ERR_RANGE, "n_experts"};
        json_object_set_new(j, "n_experts", json_integer(0));
        json_array_clear(json_object_get(j, "experts"));
        break;
    case 16:
        *c = (struct bad_case){"name too long", MOE_ERR_RANGE, "longer than 127"};
        {
            char longname[200];
            memset(longname, 'a', sizeof longname - 1);
            longname[sizeof longname - 1] = '\0';
            json_object_set_new(f0, "name", json_string(longname));
        }
        break;
    case 17:
        *c = (struct bad_case){"epoch past 32 bits", MOE_ERR_RANGE, "\"epoch\""};
        json_object_set_new(j, "epoch", json_integer(4294967296ll));
        break;
    case 18:
        *c = (struct bad_case){"not an object", MOE_ERR_FORMAT, "not a JSON object"};
        json_decref(j);
        return strdup("[1, 2, 3]");
    case 19:
        *c = (struct bad_case){"duplicate key", MOE_ERR_FORMAT, "not valid JSON"};
        json_decref(j);
        return strdup("{\"format\":\"moe-cluster-checkpoint-1\",\"step\":1,\"step\":2}");
    default:
        json_decref(j);
        return NULL;
    }
    char *s = json_dumps(j, 0);
    json_decref(j);
    return s;
}

START_TEST(manifest_malformed)
{
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/manifest.json", tmp);
    struct moe_manifest m;
    /* the unbroken manifest reads */
    json_t *j = valid_json();
    ck_assert_int_eq(json_dump_file(j, path, 0), 0);
    json_decref(j);
    ck_assert_msg(moe_manifest_read(tmp, &m, err, sizeof err) == 0, "%s", err);
    moe_manifest_free(&m);

    struct bad_case c;
    char *text;
    int k = 0;
    for (; (text = broken(k, &c)) != NULL; k++) {
        spill(path, text, strlen(text));
        free(text);
        memset(&m, 0x5a, sizeof m);
        err[0] = '\0';
        int rc = moe_manifest_read(tmp, &m, err, sizeof err);
        ck_assert_msg(rc == c.rc, "%s: rc %d, want %d (%s)", c.what, rc, c.rc, err);
        ck_assert_msg(strstr(err, path) != NULL, "%s: error does not name the file: %s", c.what,
                      err);
        ck_assert_msg(strstr(err, c.in_err) != NULL, "%s: error lacks \"%s\": %s", c.what,
                      c.in_err, err);
        ck_assert_msg(m.files == NULL && m.expert_file == NULL && m.n_files == 0,
                      "%s: the manifest is not left empty", c.what);
    }
    ck_assert_int_eq(k, 20);

    /* no manifest: not committed */
    unlink(path);
    ck_assert_int_eq(moe_manifest_read(tmp, &m, err, sizeof err), MOE_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err, path));
    ck_assert_ptr_nonnull(strstr(err, "not committed"));
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Verify, latest, prune */

START_TEST(manifest_verify_names_the_bad_file)
{
    char dir[300], folder[512], path[600], err[1024] = "";
    snprintf(dir, sizeof dir, "%s/ck", tmp);
    make_ckpt(dir, 12, &TWO, folder);
    struct moe_manifest m;
    ck_assert_msg(moe_manifest_read(folder, &m, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(m.n_files, 4);
    ck_assert_msg(moe_manifest_verify(folder, &m, err, sizeof err) == 0, "%s", err);

    /* one flipped byte in the data of server-1 */
    snprintf(path, sizeof path, "%s/server-1.safetensors", folder);
    struct stat sb;
    ck_assert_int_eq(stat(path, &sb), 0);
    flip_byte(path, (long)sb.st_size - 3);
    ck_assert_int_eq(moe_manifest_verify(folder, &m, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(err, path) != NULL, "%s", err);
    ck_assert_msg(strstr(err, "checksum mismatch (file is corrupted)") != NULL, "%s", err);
    ck_assert_msg(strstr(err, "manifest says") && strstr(err, "file has"), "%s", err);
    flip_byte(path, (long)sb.st_size - 3);
    ck_assert_msg(moe_manifest_verify(folder, &m, err, sizeof err) == 0, "%s", err);

    /* truncated, then restored */
    size_t n;
    unsigned char *orig = slurp(path, &n);
    ck_assert_int_eq(truncate(path, sb.st_size - 1), 0);
    ck_assert_int_eq(moe_manifest_verify(folder, &m, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(err, path) && strstr(err, "size mismatch"), "%s", err);
    spill(path, orig, n);
    free(orig);
    ck_assert_msg(moe_manifest_verify(folder, &m, err, sizeof err) == 0, "%s", err);

    /* missing */
    snprintf(path, sizeof path, "%s/worker-1.safetensors", folder);
    ck_assert_int_eq(unlink(path), 0);
    ck_assert_int_eq(moe_manifest_verify(folder, &m, err, sizeof err), MOE_ERR_NOTFOUND);
    ck_assert_msg(strstr(err, path) && strstr(err, "missing"), "%s", err);
    moe_manifest_free(&m);
}
END_TEST

START_TEST(manifest_latest_skips_bad_and_uncommitted)
{
    char dir[300], folder[512], f10[512], f20[512], f30[512], path[700], err[1024] = "";
    struct moe_manifest m;
    snprintf(dir, sizeof dir, "%s/ck", tmp);
    /* a missing and an empty directory have no checkpoint */
    ck_assert_int_eq(moe_manifest_latest(dir, true, folder, sizeof folder, &m, err, sizeof err),
                     MOE_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err, dir));
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    ck_assert_int_eq(moe_manifest_latest(dir, true, folder, sizeof folder, &m, err, sizeof err),
                     MOE_ERR_NOTFOUND);

    make_ckpt(dir, 10, &ONE, f10);
    make_ckpt(dir, 20, &TWO, f20);
    make_ckpt(dir, 30, &ONE, f30);
    ck_assert_msg(moe_manifest_latest(dir, true, folder, sizeof folder, &m, err, sizeof err) == 0,
                  "%s", err);
    ck_assert_str_eq(folder, f30);
    ck_assert_int_eq(m.step, 30);
    moe_manifest_free(&m);

    /* newer folders without a manifest (in progress), with a name that is not
     * exactly step-%08lld, or whose manifest names another step are ignored */
    char f40[512], odd[600];
    moe_manifest_folder(dir, 40, f40, sizeof f40);
    ck_assert_int_eq(mkdir(f40, 0755), 0);
    snprintf(path, sizeof path, "%s/worker-0.safetensors", f40);
    spill(path, "partial", 7);
    snprintf(odd, sizeof odd, "%s/step-50", dir);
    ck_assert_int_eq(mkdir(odd, 0755), 0);
    snprintf(odd, sizeof odd, "%s/step-00000060.tmp", dir);
    ck_assert_int_eq(mkdir(odd, 0755), 0);
    char f70[512];
    moe_manifest_folder(dir, 70, f70, sizeof f70);
    ck_assert_int_eq(mkdir(f70, 0755), 0);
    {
        char src[700];
        snprintf(src, sizeof src, "%s/manifest.json", f30);
        snprintf(path, sizeof path, "%s/manifest.json", f70);
        size_t n;
        unsigned char *b = slurp(src, &n);
        spill(path, b, n);
        free(b);
    }
    ck_assert_msg(moe_manifest_latest(dir, true, folder, sizeof folder, &m, err, sizeof err) == 0,
                  "%s", err);
    ck_assert_str_eq(folder, f30);
    moe_manifest_free(&m);

    /* step 30 corrupted: the verifying search falls back to step 20, the
     * non-verifying one still takes 30 */
    snprintf(path, sizeof path, "%s/server-0.safetensors", f30);
    flip_byte(path, 100);
    ck_assert_msg(moe_manifest_latest(dir, true, folder, sizeof folder, &m, err, sizeof err) == 0,
                  "%s", err);
    ck_assert_str_eq(folder, f20);
    ck_assert_int_eq(m.step, 20);
    ck_assert_int_eq(m.n_files, 4);
    moe_manifest_free(&m);
    ck_assert_int_eq(moe_manifest_latest(dir, false, folder, sizeof folder, &m, err, sizeof err),
                     0);
    ck_assert_str_eq(folder, f30);
    moe_manifest_free(&m);

    /* step 20's manifest unreadable: both fall back to 10 (after 30 too, unverified) */
    snprintf(path, sizeof path, "%s/manifest.json", f20);
    spill(path, "{\"format\":", 10);
    ck_assert_int_eq(moe_manifest_latest(dir, true, folder, sizeof folder, &m, err, sizeof err),
                     0);
    ck_assert_str_eq(folder, f10);
    moe_manifest_free(&m);

    /* a path that does not fit */
    char small[8];
    ck_assert_int_eq(moe_manifest_latest(dir, true, small, sizeof small, &m, err, sizeof err),
                     MOE_ERR_RANGE);
    ck_assert_ptr_null(m.files);

    /* nothing good left */
    snprintf(path, sizeof path, "%s/worker-0.safetensors", f10);
    flip_byte(path, 10);
    ck_assert_int_eq(moe_manifest_latest(dir, true, folder, sizeof folder, &m, err, sizeof err),
                     MOE_ERR_NOTFOUND);
    ck_assert_msg(strstr(err, dir) && strstr(err, "no committed checkpoint"), "%s", err);
}
END_TEST

START_TEST(manifest_prune_keeps_newest_committed)
{
    char dir[300], f[8][512], path[700];
    snprintf(dir, sizeof dir, "%s/ck", tmp);
    ck_assert_int_eq(moe_manifest_prune(dir, 2), 0); /* no directory: nothing to do */
    const int64_t committed[] = {10, 20, 30, 40};
    for (int i = 0; i < 4; i++)
        make_ckpt(dir, committed[i], &ONE, f[i]);
    /* uncommitted: one older than the newest committed (abandoned; between
     * the two to keep, so it must not count as one of them), one newer (in
     * progress) */
    moe_manifest_folder(dir, 35, f[4], sizeof f[4]);
    moe_manifest_folder(dir, 50, f[5], sizeof f[5]);
    for (int i = 4; i < 6; i++) {
        ck_assert_int_eq(mkdir(f[i], 0755), 0);
        snprintf(path, sizeof path, "%s/worker-0.safetensors", f[i]);
        spill(path, "partial", 7);
    }
    /* a folder that is not a checkpoint */
    snprintf(f[6], sizeof f[6], "%s/notes", dir);
    ck_assert_int_eq(mkdir(f[6], 0755), 0);

    ck_assert_int_eq(moe_manifest_prune(dir, 0), MOE_ERR_RANGE);
    ck_assert_int_eq(moe_manifest_prune(dir, 2), 3); /* 10, 20 and 35 */
    ck_assert(!exists(f[0]));
    ck_assert(!exists(f[1]));
    ck_assert(!exists(f[4]));
    ck_assert(exists(f[2]));
    ck_assert(exists(f[3]));
    ck_assert(exists(f[5]));
    ck_assert(exists(f[6]));
    snprintf(path, sizeof path, "%s/worker-0.safetensors", f[5]);
    ck_assert(exists(path));
    char err[1024];
    struct moe_manifest m;
    for (int i = 2; i < 4; i++) {
        ck_assert_msg(moe_manifest_read(f[i], &m, err, sizeof err) == 0, "%s", err);
        ck_assert_msg(moe_manifest_verify(f[i], &m, err, sizeof err) == 0, "%s", err);
        moe_manifest_free(&m);
    }
    ck_assert_int_eq(moe_manifest_prune(dir, 2), 0);
    ck_assert_int_eq(moe_manifest_prune(dir, 5), 0);
    ck_assert_int_eq(moe_manifest_prune(dir, 1), 1);
    ck_assert(!exists(f[2]));
    ck_assert(exists(f[3]));
    ck_assert(exists(f[5]));

    /* a newer committed checkpoint makes the old in-progress folder prunable */
    make_ckpt(dir, 60, &ONE, f[7]);
    ck_assert_int_eq(moe_manifest_prune(dir, 1), 2); /* 40 and 50 */
    ck_assert(!exists(f[3]));
    ck_assert(!exists(f[5]));
    ck_assert(exists(f[7]));
    ck_assert(exists(f[6]));
}
END_TEST

START_TEST(manifest_prune_without_committed_removes_nothing)
{
    char dir[300], f[512], path[700];
    snprintf(dir, sizeof dir, "%s/ck", tmp);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    moe_manifest_folder(dir, 5, f, sizeof f);
    ck_assert_int_eq(mkdir(f, 0755), 0);
    snprintf(path, sizeof path, "%s/manifest.json", f);
    spill(path, "garbage", 7); /* unreadable: not committed */
    ck_assert_int_eq(moe_manifest_prune(dir, 1), 0);
    ck_assert(exists(path));
}
END_TEST

/* After a failure: folders newer than the committed step without a
 * manifest go, committed ones and older folders stay. */
START_TEST(manifest_remove_uncommitted_only_newer_partial)
{
    char dir[300], f[6][512], path[700];
    snprintf(dir, sizeof dir, "%s/ck", tmp);
    ck_assert_int_eq(moe_manifest_remove_uncommitted(dir, 10), 0); /* no directory */
    make_ckpt(dir, 10, &ONE, f[0]);
    make_ckpt(dir, 30, &ONE, f[1]); /* committed, newer than the step given */
    const int64_t partial[] = {5, 20, 40, 50};
    for (int i = 0; i < 4; i++) {
        moe_manifest_folder(dir, partial[i], f[2 + i], sizeof f[2 + i]);
        ck_assert_int_eq(mkdir(f[2 + i], 0755), 0);
        snprintf(path, sizeof path, "%s/server-3.safetensors.tmp.77", f[2 + i]);
        spill(path, "partial", 7);
    }
    ck_assert_int_eq(moe_manifest_remove_uncommitted(dir, 10), 3); /* 20, 40, 50 */
    ck_assert(exists(f[0]));
    ck_assert(exists(f[1]));
    ck_assert(exists(f[2])); /* 5: older than the committed step, prune's business */
    ck_assert(!exists(f[3]));
    ck_assert(!exists(f[4]));
    ck_assert(!exists(f[5]));
    ck_assert_int_eq(moe_manifest_remove_uncommitted(dir, 10), 0);
    /* -1: no committed checkpoint at all */
    ck_assert_int_eq(moe_manifest_remove_uncommitted(dir, -1), 1); /* 5 */
    ck_assert(exists(f[0]));
    ck_assert(exists(f[1]));
}
END_TEST

/* ------------------------------------------------------------------------ */
/* Export */

/* The tensor names of a safetensors file in header order, and its metadata. */
static json_t *header_of(const char *path)
{
    size_t n;
    unsigned char *b = slurp(path, &n);
    ck_assert_uint_ge(n, 8);
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++)
        hl |= (uint64_t)b[i] << (8 * i);
    ck_assert_uint_le(hl, n - 8);
    json_error_t je;
    json_t *j = json_loadb((const char *)b + 8, (size_t)hl, 0, &je);
    ck_assert_msg(j != NULL, "%s", je.text);
    free(b);
    return j;
}

static void check_export(const char *path, bool params_only, int64_t step)
{
    json_t *h = header_of(path);
    const char *key, *prev = NULL;
    json_t *v;
    int n = 0, first = 1;
    json_object_foreach(h, key, v) {
        if (first) {
            ck_assert_str_eq(key, "__metadata__");
            ck_assert_int_eq(json_object_size(v), 2);
            ck_assert_str_eq(json_string_value(json_object_get(v, "format")), "moe-export-1");
            char s[32];
            snprintf(s, sizeof s, "%lld", (long long)step);
            ck_assert_str_eq(json_string_value(json_object_get(v, "step")), s);
            first = 0;
            continue;
        }
        ck_assert_msg(!prev || strcmp(prev, key) < 0, "names not sorted: %s before %s", prev, key);
        ck_assert_msg(strncmp(key, "state.", 6) != 0, "per-worker state %s exported", key);
        size_t len = strlen(key);
        bool opt = (len > 6 && !strcmp(key + len - 6, ".fadam")) ||
                   (len > 7 && (!strcmp(key + len - 7, ".adam_m") ||
                                !strcmp(key + len - 7, ".adam_v")));
        ck_assert_msg(!(params_only && opt), "optimizer state %s in a params-only export", key);
        prev = key;
        n++;
    }
    ck_assert_int_eq(n, params_only ? N_DENSE + E * EXPERT_PARTS
                                    : N_DENSE + N_DENSE_OPT + 2 * E * EXPERT_PARTS);
    json_decref(h);

    /* values are the ones written */
    char err[512] = "";
    moe_safetensors_t *st = moe_safetensors_open(path, err, sizeof err);
    ck_assert_msg(st != NULL, "%s", err);
    const char *names[] = {"moe.experts.2.w2.weight", "moe.experts.3.w1.bias", "softmax.weight",
                           "moe.experts.0.w1.weight.fadam"};
    for (int i = 0; i < (params_only ? 3 : 4); i++) {
        struct moe_st_view view;
        ck_assert_int_eq(moe_safetensors_find(st, names[i], &view), 0);
        size_t numel = view.nbytes / sizeof(float);
        float *want = malloc(view.nbytes);
        tu_fill(want, numel, (uint32_t)moe_checksum64(MOE_CHECKSUM_INIT, names[i], strlen(names[i])),
                1.0f);
        ck_assert_msg(memcmp(want, view.data, view.nbytes) == 0, "%s differs", names[i]);
        free(want);
    }
    moe_safetensors_close(&st);
}

START_TEST(manifest_export_is_canonical)
{
    char da[300], db[300], fa[512], fb[512], oa[600], ob[600], pa[600], pb[600];
    char err[1024] = "";
    snprintf(da, sizeof da, "%s/a", tmp);
    snprintf(db, sizeof db, "%s/b", tmp);
    make_ckpt(da, 12, &ONE, fa);
    make_ckpt(db, 12, &TWO, fb);
    /* the checkpoints really differ */
    struct moe_manifest ma, mb;
    ck_assert_int_eq(moe_manifest_read(fa, &ma, err, sizeof err), 0);
    ck_assert_int_eq(moe_manifest_read(fb, &mb, err, sizeof err), 0);
    ck_assert_int_eq(ma.n_files, 3);
    ck_assert_int_eq(mb.n_files, 4);
    ck_assert_str_eq(mb.files[0].name, "server-1.safetensors");
    moe_manifest_free(&ma);
    moe_manifest_free(&mb);

    snprintf(oa, sizeof oa, "%s/a.safetensors", tmp);
    snprintf(ob, sizeof ob, "%s/b.safetensors", tmp);
    snprintf(pa, sizeof pa, "%s/a-params.safetensors", tmp);
    snprintf(pb, sizeof pb, "%s/b-params.safetensors", tmp);
    ck_assert_msg(moectl_export(fa, oa, false, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(moectl_export(fb, ob, false, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(moectl_export(fa, pa, true, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(moectl_export(fb, pb, true, err, sizeof err) == 0, "%s", err);

    size_t na, nb;
    unsigned char *ba = slurp(oa, &na), *bb = slurp(ob, &nb);
    ck_assert_uint_eq(na, nb);
    ck_assert_msg(memcmp(ba, bb, na) == 0, "exports of the same tensors differ");
    free(ba);
    free(bb);
    size_t npa, npb;
    ba = slurp(pa, &npa);
    bb = slurp(pb, &npb);
    ck_assert_uint_eq(npa, npb);
    ck_assert_msg(memcmp(ba, bb, npa) == 0, "params-only exports of the same tensors differ");
    ck_assert_uint_lt(npa, na);
    free(ba);
    free(bb);
    check_export(oa, false, 12);
    check_export(pa, true, 12);

    /* exporting again over the same path gives the same bytes */
    ck_assert_msg(moectl_export(fb, oa, false, err, sizeof err) == 0, "%s", err);
    ba = slurp(oa, &na);
    bb = slurp(ob, &nb);
    ck_assert(na == nb && memcmp(ba, bb, na) == 0);
    free(ba);
    free(bb);
}
END_TEST

START_TEST(manifest_export_errors)
{
    char dir[300], folder[512], out[600], path[700], err[1024] = "";
    snprintf(dir, sizeof dir, "%s/ck", tmp);
    snprintf(out, sizeof out, "%s/out.safetensors", tmp);

    /* expert 1 held by both servers */
    struct layout dup = TWO;
    dup.dup = 1;
    make_ckpt(dir, 1, &dup, folder);
    ck_assert_int_eq(moectl_export(folder, out, false, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(err, "moe.experts.1.") && strstr(err, "appears twice") &&
                      strstr(err, "server-0.safetensors") && strstr(err, "server-1.safetensors"),
                  "%s", err);
    ck_assert(!exists(out));

    /* expert 3 in no file */
    struct layout miss = TWO;
    miss.skip = 3;
    make_ckpt(dir, 2, &miss, folder);
    ck_assert_int_eq(moectl_export(folder, out, true, err, sizeof err), MOE_ERR_NOTFOUND);
    ck_assert_msg(strstr(err, "expert 3 is missing") && strstr(err, "moe.experts.3.w1.weight"),
                  "%s", err);
    ck_assert(!exists(out));

    /* an expert in another file than the manifest says: a good checkpoint
     * whose manifest then puts expert 0 where expert 1 is */
    make_ckpt(dir, 3, &TWO, folder);
    struct moe_manifest m;
    ck_assert_int_eq(moe_manifest_read(folder, &m, err, sizeof err), 0);
    m.expert_file[0] = m.expert_file[1];
    ck_assert_int_eq(moe_manifest_write(folder, &m, err, sizeof err), 0);
    moe_manifest_free(&m);
    ck_assert_int_eq(moectl_export(folder, out, false, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(err, "moe.experts.0.") && strstr(err, "puts expert 0"), "%s", err);

    /* a corrupted file is caught before anything is written */
    make_ckpt(dir, 4, &ONE, folder);
    snprintf(path, sizeof path, "%s/server-0.safetensors", folder);
    flip_byte(path, 200);
    ck_assert_int_eq(moectl_export(folder, out, false, err, sizeof err), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(err, path) && strstr(err, "checksum mismatch"), "%s", err);
    ck_assert(!exists(out));

    /* never over one of the checkpoint's own files */
    make_ckpt(dir, 5, &ONE, folder);
    snprintf(path, sizeof path, "%s/worker-0.safetensors", folder);
    ck_assert_int_eq(moectl_export(folder, path, false, err, sizeof err), MOE_ERR_STATE);
    struct moe_manifest m5;
    ck_assert_int_eq(moe_manifest_read(folder, &m5, err, sizeof err), 0);
    ck_assert_msg(moe_manifest_verify(folder, &m5, err, sizeof err) == 0, "%s", err);
    moe_manifest_free(&m5);

    /* an uncommitted folder */
    char f6[512];
    moe_manifest_folder(dir, 6, f6, sizeof f6);
    ck_assert_int_eq(mkdir(f6, 0755), 0);
    ck_assert_int_eq(moectl_export(f6, out, false, err, sizeof err), MOE_ERR_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err, f6));
}
END_TEST

Suite *test_manifest_suite(void)
{
    Suite *s = suite_create("manifest");
    TCase *tm = tcase_create("manifest");
    tcase_add_checked_fixture(tm, setup, teardown);
    tcase_set_timeout(tm, 60);
    tcase_add_test(tm, manifest_checksum_streams);
    tcase_add_test(tm, manifest_round_trip);
    tcase_add_test(tm, manifest_malformed);
    suite_add_tcase(s, tm);

    TCase *tc = tcase_create("checkpoints");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, manifest_verify_names_the_bad_file);
    tcase_add_test(tc, manifest_latest_skips_bad_and_uncommitted);
    tcase_add_test(tc, manifest_prune_keeps_newest_committed);
    tcase_add_test(tc, manifest_prune_without_committed_removes_nothing);
    tcase_add_test(tc, manifest_remove_uncommitted_only_newer_partial);
    suite_add_tcase(s, tc);

    TCase *te = tcase_create("export");
    tcase_add_checked_fixture(te, setup, teardown);
    tcase_set_timeout(te, 60);
    tcase_add_test(te, manifest_export_is_canonical);
    tcase_add_test(te, manifest_export_errors);
    suite_add_tcase(s, te);
    return s;
}
