/* Cluster checkpoint manifests, verification, pruning and export (see
 * moe_manifest.h).
 *
 * Bytes from a manifest or a checkpoint file are never trusted: every key is
 * type- and range-checked, file names are plain names inside the folder, and
 * strings quoted in errors are sanitised. Files are checksummed by streaming
 * them, never by mapping them. */
#include "moe_manifest.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "expert_shard.h"
#include "moe_checksum.h"
#include "moe_err.h"
#include "moe_log.h"
#include "moe_safetensors.h"
#include "moe_file.h"

#define MF_PATH 4096
#define MF_CHUNK ((size_t)1 << 20)        /* a multiple of 8: see file_checksum */
#define MF_MAX_JSON ((long long)256 << 20) /* bytes of a manifest */
#define MF_MAX_EXPERTS (1 << 20)
#define MF_MAX_FILES (1 << 20)
#define MF_MAX_WORKERS (1 << 20)
#define MF_STEP_PREFIX "step-"
#define MF_SHOW 160                        /* bytes of a quoted string in an error */

/* ------------------------------------------------------------------------ */
/* Small helpers */

static void show(char *out, size_t cap, const char *s)
{
    moe_log_sanitize(out, cap, s, strlen(s));
}

/* Parses "step-%08lld" exactly (the name the coordinator writes); false for
 * anything else, e.g. "step-12", "step-00000012.tmp" or "step-+0000012". */
static bool parse_step_name(const char *name, int64_t *step)
{
    size_t k = strlen(MF_STEP_PREFIX);
    if (strncmp(name, MF_STEP_PREFIX, k) != 0)
        return false;
    const char *d = name + k;
    size_t nd = strlen(d);
    if (nd < 8 || nd > 19)
        return false;
    for (size_t i = 0; i < nd; i++)
        if (d[i] < '0' || d[i] > '9')
            return false;
    errno = 0;
    char *end;
    long long v = strtoll(d, &end, 10);
    if (errno || *end)
        return false;
    char again[32];
    snprintf(again, sizeof again, MF_STEP_PREFIX "%08lld", v);
    if (strcmp(again, name) != 0)
        return false;
    *step = v;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Checksums */

/* The word mix of moe_checksum64 (common/moe_checksum.c). moe_checksum64
 * folds the tail and the total length into its result on every call, so it
 * cannot be continued across chunks; a file is streamed with the same
 * per-word mix and finished exactly as one call over the whole file would.
 * test_manifest checks the two agree on sizes around every boundary. */
static inline uint64_t ck_mix(uint64_t h, uint64_t w)
{
    h ^= w * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 31)) * 0x94D049BB133111EBull;
    return h ^ (h >> 29);
}

int moe_manifest_file_checksum(const char *path, uint64_t *sum, uint64_t *bytes, char *err,
                               size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        moe_err_set(err, errlen, "%s: cannot open: %s", path, strerror(e));
        return e == ENOENT ? MOE_ERR_NOTFOUND : MOE_ERR_IO;
    }
    unsigned char *buf = malloc(MF_CHUNK);
    if (!buf) {
        close(fd);
        moe_err_set(err, errlen, "%s: out of memory checksumming the file", path);
        return MOE_ERR_NOMEM;
    }
    uint64_t h = MOE_CHECKSUM_INIT, total = 0;
    for (;;) {
        /* fill the whole chunk unless the file ends: only the last chunk
         * may hold a partial word */
        size_t fill = 0;
        bool eof = false;
        while (fill < MF_CHUNK) {
            ssize_t r = read(fd, buf + fill, MF_CHUNK - fill);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0) {
                int e = errno;
                free(buf);
                close(fd);
                moe_err_set(err, errlen, "%s: read failed: %s", path, strerror(e));
                return MOE_ERR_IO;
            }
            if (r == 0) {
                eof = true;
                break;
            }
            fill += (size_t)r;
        }
        size_t i = 0;
        for (; i + 8 <= fill; i += 8) {
            uint64_t w;
            memcpy(&w, buf + i, 8);
            h = ck_mix(h, w);
        }
        total += fill;
        if (eof) {
            uint64_t tail = 0;
            for (size_t k = 0; i + k < fill; k++)
                tail |= (uint64_t)buf[i + k] << (8 * k);
            h = ck_mix(ck_mix(h, tail), total);
            break;
        }
    }
    free(buf);
    close(fd);
    *sum = h;
    *bytes = total;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Validation shared by write and read */

static int cmp_name_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Checks the semantic rules on a manifest; `path` names the manifest file. */
static int validate(const struct moe_manifest *m, const char *path, char *err, size_t errlen)
{
    if (m->step < 0) {
        moe_err_set(err, errlen, "%s: step %" PRId64 " is negative", path, m->step);
        return MOE_ERR_RANGE;
    }
    const struct { const char *key; int v, max; } ints[] = {
        {"n_experts", m->n_experts, MF_MAX_EXPERTS}, {"d_model", m->d_model, INT_MAX},
        {"d_hidden", m->d_hidden, INT_MAX},          {"workers", m->workers, MF_MAX_WORKERS},
        {"files (count)", m->n_files, MF_MAX_FILES}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (ints[i].v < 1 || ints[i].v > ints[i].max) {
            moe_err_set(err, errlen, "%s: %s is %d, outside 1..%d", path, ints[i].key, ints[i].v,
                        ints[i].max);
            return MOE_ERR_RANGE;
        }
    if (!m->files || !m->expert_file) {
        moe_err_set(err, errlen, "%s: the manifest has no file list or expert list", path);
        return MOE_ERR_FORMAT;
    }
    const char **names = malloc(sizeof *names * (size_t)m->n_files);
    if (!names) {
        moe_err_set(err, errlen, "%s: out of memory validating the manifest", path);
        return MOE_ERR_NOMEM;
    }
    int rc = 0;
    char sn[MF_SHOW];
    for (int i = 0; i < m->n_files && !rc; i++) {
        const struct moe_manifest_file *f = &m->files[i];
        size_t len = strnlen(f->name, sizeof f->name);
        if (len == sizeof f->name) {
            moe_err_set(err, errlen, "%s: files[%d].name is not terminated within %zu bytes", path,
                        i, sizeof f->name);
            rc = MOE_ERR_RANGE;
            break;
        }
        show(sn, sizeof sn, f->name);
        if (len == 0 || strchr(f->name, '/') || !strcmp(f->name, ".") || !strcmp(f->name, "..") ||
            !strcmp(f->name, MOE_MANIFEST_NAME)) {
            moe_err_set(err, errlen,
                        "%s: files[%d].name \"%s\" is not a plain file name of the checkpoint "
                        "folder (empty, contains '/', \".\", \"..\" or the manifest itself)",
                        path, i, sn);
            rc = MOE_ERR_FORMAT;
        } else if (f->bytes > (uint64_t)INT64_MAX) {
            moe_err_set(err, errlen, "%s: files[%d] (\"%s\") has an impossible size %" PRIu64,
                        path, i, sn, f->bytes);
            rc = MOE_ERR_RANGE;
        }
        names[i] = f->name;
    }
    if (!rc) {
        qsort(names, (size_t)m->n_files, sizeof *names, cmp_name_ptr);
        for (int i = 1; i < m->n_files; i++)
            if (!strcmp(names[i], names[i - 1])) {
                show(sn, sizeof sn, names[i]);
                moe_err_set(err, errlen, "%s: file \"%s\" is listed twice", path, sn);
                rc = MOE_ERR_FORMAT;
                break;
            }
    }
    free(names);
    for (int e = 0; e < m->n_experts && !rc; e++)
        if (m->expert_file[e] < 0 || m->expert_file[e] >= m->n_files) {
            moe_err_set(err, errlen,
                        "%s: experts[%d] is %d, not an index into files (0..%d)", path, e,
                        m->expert_file[e], m->n_files - 1);
            rc = MOE_ERR_RANGE;
        }
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Write */

void moe_manifest_folder(const char *dir, int64_t step, char *out, size_t cap)
{
    snprintf(out, cap, "%s/" MF_STEP_PREFIX "%08lld", dir, (long long)step);
}

int moe_manifest_make_folder(const char *dir, int64_t step, char *out, size_t cap, char *err,
                             size_t errlen)
{
    moe_manifest_folder(dir, step, out, cap);
    const char *paths[2] = {dir, out};
    for (int i = 0; i < 2; i++)
        if (mkdir(paths[i], 0755) != 0 && errno != EEXIST) {
            moe_err_set(err, errlen, "%s: cannot create checkpoint folder: %s", paths[i],
                        strerror(errno));
            return MOE_ERR_IO;
        }
    return 0;
}

static json_t *to_json(const struct moe_manifest *m)
{
    json_t *root = json_object(), *files = json_array(), *experts = json_array();
    if (!root || !files || !experts)
        goto fail;
    int bad = 0;
    bad |= json_object_set_new(root, "format", json_string(MOE_MANIFEST_FORMAT));
    bad |= json_object_set_new(root, "step", json_integer((json_int_t)m->step));
    bad |= json_object_set_new(root, "epoch", json_integer((json_int_t)m->epoch));
    bad |= json_object_set_new(root, "placement_version",
                               json_integer((json_int_t)m->placement_version));
    bad |= json_object_set_new(root, "n_experts", json_integer(m->n_experts));
    bad |= json_object_set_new(root, "d_model", json_integer(m->d_model));
    bad |= json_object_set_new(root, "d_hidden", json_integer(m->d_hidden));
    bad |= json_object_set_new(root, "workers", json_integer(m->workers));
    for (int i = 0; i < m->n_files && !bad; i++) {
        char sum[20];
        snprintf(sum, sizeof sum, "%016" PRIx64, m->files[i].checksum);
        json_t *f = json_object();
        bad |= f == NULL;
        bad |= json_object_set_new(f, "name", json_string(m->files[i].name));
        bad |= json_object_set_new(f, "bytes", json_integer((json_int_t)m->files[i].bytes));
        bad |= json_object_set_new(f, "checksum", json_string(sum));
        bad |= json_array_append_new(files, f);
    }
    for (int e = 0; e < m->n_experts && !bad; e++)
        bad |= json_array_append_new(experts, json_integer(m->expert_file[e]));
    bad |= json_object_set_new(root, "files", files);
    files = NULL;
    bad |= json_object_set_new(root, "experts", experts);
    experts = NULL;
    if (bad)
        goto fail;
    return root;
fail:
    json_decref(root);
    json_decref(files);
    json_decref(experts);
    return NULL;
}


int moe_manifest_write(const char *folder, const struct moe_manifest *m, char *err, size_t errlen)
{
    char path[MF_PATH], tmp[MF_PATH + 32];
    if (moe_path_join(path, sizeof path, folder, MOE_MANIFEST_NAME)) {
        moe_err_set(err, errlen, "%s: path too long", folder);
        return MOE_ERR_RANGE;
    }
    int rc = validate(m, path, err, errlen);
    if (rc)
        return rc;
    json_t *root = to_json(m);
    char *text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    json_decref(root);
    if (!text) {
        moe_err_set(err, errlen, "%s: out of memory building the manifest", path);
        return MOE_ERR_NOMEM;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        moe_err_set(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        free(text);
        return MOE_ERR_IO;
    }
    const char *what = NULL;
    if (moe_write_all(fd, text, strlen(text)) || moe_write_all(fd, "\n", 1))
        what = "write";
    else if (fsync(fd))
        what = "fsync";
    int e = errno;
    if (close(fd) && !what) {
        what = "close";
        e = errno;
    }
    free(text);
    if (!what && rename(tmp, path)) {
        what = "rename";
        e = errno;
    }
    if (what) {
        unlink(tmp);
        moe_err_set(err, errlen, "%s: %s failed: %s (the manifest was not written)", tmp, what,
                    strerror(e));
        return MOE_ERR_IO;
    }
    if (moe_fsync_dir(folder)) {
        moe_err_set(err, errlen, "%s: fsync of the folder failed after writing %s: %s", folder,
                    MOE_MANIFEST_NAME, strerror(errno));
        return MOE_ERR_IO;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Read */

void moe_manifest_free(struct moe_manifest *m)
{
    if (!m)
        return;
    free(m->files);
    free(m->expert_file);
    memset(m, 0, sizeof *m);
}

/* Integer `key` of obj in lo..hi. `where` names the manifest (and element). */
static int get_int(json_t *obj, const char *key, long long lo, long long hi, long long *out,
                   const char *path, const char *where, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        moe_err_set(err, errlen, "%s: %s has no \"%s\"", path, where, key);
        return MOE_ERR_FORMAT;
    }
    if (!json_is_integer(v)) {
        moe_err_set(err, errlen, "%s: %s: \"%s\" must be an integer", path, where, key);
        return MOE_ERR_FORMAT;
    }
    long long x = (long long)json_integer_value(v);
    if (x < lo || x > hi) {
        moe_err_set(err, errlen, "%s: %s: \"%s\" is %lld, outside %lld..%lld", path, where, key,
                    x, lo, hi);
        return MOE_ERR_RANGE;
    }
    *out = x;
    return 0;
}

static int parse_hex64(const char *s, uint64_t *out)
{
    if (strlen(s) != 16)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return 0;
}

static int parse_file(json_t *f, int i, struct moe_manifest_file *out, const char *path, char *err,
                      size_t errlen)
{
    char where[48];
    snprintf(where, sizeof where, "files[%d]", i);
    if (!json_is_object(f)) {
        moe_err_set(err, errlen, "%s: %s must be an object", path, where);
        return MOE_ERR_FORMAT;
    }
    json_t *name = json_object_get(f, "name"), *sum = json_object_get(f, "checksum");
    if (!json_is_string(name) || !json_is_string(sum)) {
        moe_err_set(err, errlen, "%s: %s needs string \"name\" and \"checksum\"", path, where);
        return MOE_ERR_FORMAT;
    }
    const char *s = json_string_value(name);
    size_t len = json_string_length(name);
    char sn[MF_SHOW];
    moe_log_sanitize(sn, sizeof sn, s, len);
    if (strlen(s) != len) {
        moe_err_set(err, errlen, "%s: %s.name \"%s\" contains a NUL byte", path, where, sn);
        return MOE_ERR_FORMAT;
    }
    if (len >= sizeof out->name) {
        moe_err_set(err, errlen, "%s: %s.name \"%s\" is longer than %zu bytes", path, where, sn,
                    sizeof out->name - 1);
        return MOE_ERR_RANGE;
    }
    memcpy(out->name, s, len + 1);
    long long bytes;
    int rc = get_int(f, "bytes", 0, INT64_MAX, &bytes, path, where, err, errlen);
    if (rc)
        return rc;
    out->bytes = (uint64_t)bytes;
    if (parse_hex64(json_string_value(sum), &out->checksum)) {
        moe_log_sanitize(sn, sizeof sn, json_string_value(sum), json_string_length(sum));
        moe_err_set(err, errlen, "%s: %s.checksum \"%s\" is not 16 hex digits", path, where, sn);
        return MOE_ERR_FORMAT;
    }
    return 0;
}

static int parse_manifest(json_t *root, struct moe_manifest *m, const char *path, char *err,
                          size_t errlen)
{
    char sn[MF_SHOW];
    if (!json_is_object(root)) {
        moe_err_set(err, errlen, "%s: the manifest is not a JSON object", path);
        return MOE_ERR_FORMAT;
    }
    json_t *fmt = json_object_get(root, "format");
    if (!json_is_string(fmt)) {
        moe_err_set(err, errlen, "%s: no \"format\" string (not a cluster checkpoint manifest)",
                    path);
        return MOE_ERR_FORMAT;
    }
    if (strcmp(json_string_value(fmt), MOE_MANIFEST_FORMAT) != 0 ||
        json_string_length(fmt) != strlen(MOE_MANIFEST_FORMAT)) {
        moe_log_sanitize(sn, sizeof sn, json_string_value(fmt), json_string_length(fmt));
        bool other_version = strncmp(json_string_value(fmt), "moe-cluster-checkpoint-",
                                     strlen("moe-cluster-checkpoint-")) == 0;
        moe_err_set(err, errlen, "%s: format is \"%s\", expected \"%s\"%s", path, sn,
                    MOE_MANIFEST_FORMAT,
                    other_version ? " (a checkpoint of another version of this program)"
                                  : " (not a cluster checkpoint manifest)");
        return other_version ? MOE_ERR_VERSION : MOE_ERR_FORMAT;
    }
    long long step, epoch, pv, ne, dm, dh, w;
    int rc;
    if ((rc = get_int(root, "step", 0, INT64_MAX, &step, path, "the manifest", err, errlen)) ||
        (rc = get_int(root, "epoch", 0, UINT32_MAX, &epoch, path, "the manifest", err, errlen)) ||
        (rc = get_int(root, "placement_version", 0, UINT32_MAX, &pv, path, "the manifest", err,
                      errlen)) ||
        (rc = get_int(root, "n_experts", 1, MF_MAX_EXPERTS, &ne, path, "the manifest", err,
                      errlen)) ||
        (rc = get_int(root, "d_model", 1, INT_MAX, &dm, path, "the manifest", err, errlen)) ||
        (rc = get_int(root, "d_hidden", 1, INT_MAX, &dh, path, "the manifest", err, errlen)) ||
        (rc = get_int(root, "workers", 1, MF_MAX_WORKERS, &w, path, "the manifest", err, errlen)))
        return rc;
    m->step = step;
    m->epoch = (uint32_t)epoch;
    m->placement_version = (uint32_t)pv;
    m->n_experts = (int)ne;
    m->d_model = (int)dm;
    m->d_hidden = (int)dh;
    m->workers = (int)w;

    json_t *files = json_object_get(root, "files"), *experts = json_object_get(root, "experts");
    if (!json_is_array(files) || json_array_size(files) < 1 ||
        json_array_size(files) > MF_MAX_FILES) {
        moe_err_set(err, errlen, "%s: \"files\" must be an array of 1..%d entries", path,
                    MF_MAX_FILES);
        return MOE_ERR_FORMAT;
    }
    if (!json_is_array(experts) || json_array_size(experts) != (size_t)m->n_experts) {
        moe_err_set(err, errlen,
                    "%s: \"experts\" must be an array of n_experts (%d) file indices%s", path,
                    m->n_experts, json_is_array(experts) ? ", one per expert" : "");
        return MOE_ERR_FORMAT;
    }
    m->n_files = (int)json_array_size(files);
    m->files = calloc((size_t)m->n_files, sizeof *m->files);
    m->expert_file = calloc((size_t)m->n_experts, sizeof *m->expert_file);
    if (!m->files || !m->expert_file) {
        moe_err_set(err, errlen, "%s: out of memory reading the manifest", path);
        return MOE_ERR_NOMEM;
    }
    for (int i = 0; i < m->n_files; i++)
        if ((rc = parse_file(json_array_get(files, (size_t)i), i, &m->files[i], path, err,
                             errlen)))
            return rc;
    for (int e = 0; e < m->n_experts; e++) {
        json_t *v = json_array_get(experts, (size_t)e);
        if (!json_is_integer(v)) {
            moe_err_set(err, errlen, "%s: experts[%d] must be an integer file index", path, e);
            return MOE_ERR_FORMAT;
        }
        long long x = (long long)json_integer_value(v);
        if (x < 0 || x >= m->n_files) {
            moe_err_set(err, errlen, "%s: experts[%d] is %lld, not an index into files (0..%d)",
                        path, e, x, m->n_files - 1);
            return MOE_ERR_RANGE;
        }
        m->expert_file[e] = (int)x;
    }
    return validate(m, path, err, errlen);
}

int moe_manifest_read(const char *folder, struct moe_manifest *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    char path[MF_PATH];
    if (moe_path_join(path, sizeof path, folder, MOE_MANIFEST_NAME)) {
        moe_err_set(err, errlen, "%s: path too long", folder);
        return MOE_ERR_RANGE;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        if (e == ENOENT) {
            moe_err_set(err, errlen, "%s: no such file (the checkpoint is not committed)", path);
            return MOE_ERR_NOTFOUND;
        }
        moe_err_set(err, errlen, "%s: cannot open: %s", path, strerror(e));
        return MOE_ERR_IO;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) || !S_ISREG(sb.st_mode) || sb.st_size > MF_MAX_JSON) {
        fclose(f);
        moe_err_set(err, errlen, "%s: not a regular file of at most %lld bytes", path,
                    MF_MAX_JSON);
        return MOE_ERR_FORMAT;
    }
    json_error_t je;
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
    fclose(f);
    if (!root) {
        moe_err_set(err, errlen, "%s: not valid JSON (line %d, column %d: %s)", path, je.line,
                    je.column, je.text);
        return MOE_ERR_FORMAT;
    }
    int rc = parse_manifest(root, m, path, err, errlen);
    json_decref(root);
    if (rc)
        moe_manifest_free(m);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Verify */

int moe_manifest_verify_file(const char *folder, const struct moe_manifest *m, int i, char *err,
                             size_t errlen)
{
    char path[MF_PATH];
    const struct moe_manifest_file *f = &m->files[i];
    if (moe_path_join(path, sizeof path, folder, f->name)) {
        moe_err_set(err, errlen, "%s/%s: path too long", folder, f->name);
        return MOE_ERR_RANGE;
    }
    struct stat sb;
    if (stat(path, &sb)) {
        int e = errno;
        moe_err_set(err, errlen, "%s: %s (the manifest lists it)", path,
                    e == ENOENT ? "missing" : strerror(e));
        return e == ENOENT ? MOE_ERR_NOTFOUND : MOE_ERR_IO;
    }
    if (!S_ISREG(sb.st_mode)) {
        moe_err_set(err, errlen, "%s: not a regular file (the manifest lists it)", path);
        return MOE_ERR_FORMAT;
    }
    if ((uint64_t)sb.st_size != f->bytes) {
        moe_err_set(err, errlen,
                    "%s: size mismatch (file is truncated or was replaced): manifest says "
                    "%" PRIu64 " bytes, file has %lld",
                    path, f->bytes, (long long)sb.st_size);
        return MOE_ERR_FORMAT;
    }
    uint64_t sum, bytes;
    int rc = moe_manifest_file_checksum(path, &sum, &bytes, err, errlen);
    if (rc)
        return rc;
    if (bytes != f->bytes) {
        moe_err_set(err, errlen,
                    "%s: size mismatch (file changed while being read): manifest says "
                    "%" PRIu64 " bytes, read %" PRIu64,
                    path, f->bytes, bytes);
        return MOE_ERR_FORMAT;
    }
    if (sum != f->checksum) {
        moe_err_set(err, errlen,
                    "%s: checksum mismatch (file is corrupted): manifest says %016" PRIx64
                    ", file has %016" PRIx64,
                    path, f->checksum, sum);
        return MOE_ERR_FORMAT;
    }
    return 0;
}

int moe_manifest_verify(const char *folder, const struct moe_manifest *m, char *err, size_t errlen)
{
    for (int i = 0; i < m->n_files; i++) {
        int rc = moe_manifest_verify_file(folder, m, i, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Listing step folders: latest and prune */

struct steps {
    int64_t *v;
    size_t n;
};

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The steps of dir's step-%08lld folders, ascending. 1 if dir is missing. */
static int list_steps(const char *dir, struct steps *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR)
            return 1;
        moe_err_set(err, errlen, "%s: cannot list the checkpoint directory: %s", dir, strerror(e));
        return MOE_ERR_IO;
    }
    size_t cap = 0;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        int64_t step;
        if (!parse_step_name(de->d_name, &step))
            continue;
        char p[MF_PATH];
        struct stat sb;
        if (moe_path_join(p, sizeof p, dir, de->d_name) || stat(p, &sb) || !S_ISDIR(sb.st_mode))
            continue;
        if (s->n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            int64_t *v = realloc(s->v, sizeof *v * nc);
            if (!v) {
                moe_err_set(err, errlen, "%s: out of memory listing checkpoints", dir);
                rc = MOE_ERR_NOMEM;
                break;
            }
            s->v = v;
            cap = nc;
        }
        s->v[s->n++] = step;
    }
    closedir(d);
    if (rc) {
        free(s->v);
        memset(s, 0, sizeof *s);
        return rc;
    }
    if (s->n)
        qsort(s->v, s->n, sizeof *s->v, cmp_i64);
    return 0;
}

/* Reads the manifest of dir's folder for `step` and checks it names that
 * step. Fills folder (MF_PATH bytes). */
static int read_step(const char *dir, int64_t step, char *folder, struct moe_manifest *m,
                     char *err, size_t errlen)
{
    moe_manifest_folder(dir, step, folder, MF_PATH);
    int rc = moe_manifest_read(folder, m, err, errlen);
    if (rc)
        return rc;
    if (m->step != step) {
        moe_err_set(err, errlen, "%s/%s: names step %" PRId64 " but lies in the folder of step %" PRId64,
                    folder, MOE_MANIFEST_NAME, m->step, step);
        moe_manifest_free(m);
        return MOE_ERR_FORMAT;
    }
    return 0;
}

int moe_manifest_latest(const char *dir, bool verify, char *out, size_t cap,
                        struct moe_manifest *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    struct steps s;
    int rc = list_steps(dir, &s, err, errlen);
    if (rc == 1) {
        moe_err_set(err, errlen, "%s: no such directory (so no checkpoint)", dir);
        return MOE_ERR_NOTFOUND;
    }
    if (rc)
        return rc;
    size_t skipped = 0;
    char folder[MF_PATH], why[1024];
    for (size_t i = s.n; i-- > 0;) {
        rc = read_step(dir, s.v[i], folder, m, why, sizeof why);
        if (rc == MOE_ERR_NOMEM) {
            moe_err_set(err, errlen, "%s", why);
            free(s.v);
            return rc;
        }
        if (rc == MOE_ERR_NOTFOUND) {
            moe_info("checkpoint: skipping %s: no %s (in progress or abandoned)", folder,
                     MOE_MANIFEST_NAME);
            skipped++;
            continue;
        }
        if (!rc && verify) {
            rc = moe_manifest_verify(folder, m, why, sizeof why);
            if (rc)
                moe_manifest_free(m);
        }
        if (rc) {
            moe_warn("checkpoint: skipping %s: %s", folder, why);
            skipped++;
            continue;
        }
        free(s.v);
        int n = snprintf(out, cap, "%s", folder);
        if (n < 0 || (size_t)n >= cap) {
            moe_manifest_free(m);
            moe_err_set(err, errlen, "%s: path longer than %zu bytes", folder, cap);
            return MOE_ERR_RANGE;
        }
        return 0;
    }
    free(s.v);
    moe_err_set(err, errlen, "%s: no committed checkpoint (%zu step-* folder%s, none with a %s%s)",
                dir, skipped, skipped == 1 ? "" : "s", verify ? "manifest that verifies" : "readable manifest",
                skipped ? "; see the warnings above" : "");
    return MOE_ERR_NOTFOUND;
}

/* Removes a flat checkpoint folder: the manifest first (made durable), then
 * the other files, then the folder. */
/* list_steps for the removers: 1 with the steps, 0 when dir is missing,
 * or the error (logged). */
static int list_steps_or_warn(const char *dir, struct steps *s)
{
    char why[1024];
    int rc = list_steps(dir, s, why, sizeof why);
    if (rc == 1)
        return 0;
    if (rc) {
        moe_warn("checkpoints in %s: %s", dir, why);
        return rc;
    }
    return 1;
}

static int remove_folder(const char *folder)
{
    char p[MF_PATH];
    if (moe_path_join(p, sizeof p, folder, MOE_MANIFEST_NAME))
        return -1;
    if (unlink(p) && errno != ENOENT) {
        moe_warn("checkpoint prune: cannot remove %s: %s", p, strerror(errno));
        return -1;
    }
    moe_fsync_dir(folder);
    DIR *d = opendir(folder);
    if (!d) {
        moe_warn("checkpoint prune: cannot list %s: %s", folder, strerror(errno));
        return -1;
    }
    int bad = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (unlinkat(dirfd(d), de->d_name, 0)) {
            moe_warn("checkpoint prune: cannot remove %s/%s: %s", folder, de->d_name,
                     strerror(errno));
            bad = 1;
        }
    }
    closedir(d);
    if (bad)
        return -1;
    if (rmdir(folder)) {
        moe_warn("checkpoint prune: cannot remove %s: %s", folder, strerror(errno));
        return -1;
    }
    return 0;
}

int moe_manifest_prune(const char *dir, int keep)
{
    if (keep < 1)
        return MOE_ERR_RANGE;
    char why[1024];
    struct steps s;
    int rc = list_steps_or_warn(dir, &s);
    if (rc <= 0)
        return rc;
    bool *committed = calloc(s.n ? s.n : 1, sizeof *committed);
    if (!committed) {
        free(s.v);
        return MOE_ERR_NOMEM;
    }
    char folder[MF_PATH];
    size_t newest = s.n; /* index of the newest committed, s.n if none */
    for (size_t i = 0; i < s.n; i++) {
        struct moe_manifest m;
        committed[i] = read_step(dir, s.v[i], folder, &m, why, sizeof why) == 0;
        moe_manifest_free(&m);
        if (committed[i])
            newest = i;
    }
    int removed = 0, failed = 0, kept = 0;
    for (size_t i = newest + 1; newest < s.n && i-- > 0;) {
        if (committed[i] && kept < keep) {
            kept++;
            continue;
        }
        moe_manifest_folder(dir, s.v[i], folder, sizeof folder);
        if (remove_folder(folder)) {
            failed = 1;
            continue;
        }
        moe_info("checkpoint: removed old checkpoint %s", folder);
        removed++;
    }
    if (removed)
        moe_fsync_dir(dir);
    free(committed);
    free(s.v);
    return failed ? MOE_ERR_IO : removed;
}

int moe_manifest_remove_uncommitted(const char *dir, int64_t committed_step)
{
    struct steps s;
    int rc = list_steps_or_warn(dir, &s);
    if (rc <= 0)
        return rc;
    int removed = 0, failed = 0;
    char folder[MF_PATH], mpath[MF_PATH];
    for (size_t i = 0; i < s.n; i++) {
        if (s.v[i] <= committed_step)
            continue;
        moe_manifest_folder(dir, s.v[i], folder, sizeof folder);
        /* only folders without a manifest: never a committed checkpoint */
        if (moe_path_join(mpath, sizeof mpath, folder, MOE_MANIFEST_NAME) || access(mpath, F_OK) == 0)
            continue;
        if (remove_folder(folder)) {
            failed = 1;
            continue;
        }
        removed++;
    }
    if (removed)
        moe_fsync_dir(dir);
    free(s.v);
    return failed ? MOE_ERR_IO : removed;
}
