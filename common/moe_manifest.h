/* Cluster checkpoints: the manifest that commits a checkpoint folder, its
 * verification, finding the newest good one and pruning old ones (DESIGN
 * §6). Exporting one canonical file of a checkpoint is moectl's
 * (server/moectl/moectl_export.h).
 *
 * A checkpoint is a folder DIR/step-%08lld (steps completed) holding
 * worker-R.safetensors for every worker rank R (rank 0's also holds the dense
 * parameters and their optimizer state; every worker's holds its carried LSTM
 * state "state.*"), server-I.safetensors for every expert server I (tensors
 * moe.experts.<id>.<part> and moe.experts.<id>.<part>.fadam), and
 * manifest.json, written last by the coordinator: a checkpoint exists only
 * once its manifest does. The manifest lists every file with its size and
 * checksum (moe_checksum64 from MOE_CHECKSUM_INIT over the whole file's
 * bytes, as 16 lower-case hex digits) and, per expert, the index of the file
 * holding it:
 *
 *   {"format":"moe-cluster-checkpoint-1","step":S,"epoch":e,"placement_version":v,
 *    "n_experts":E,"d_model":D,"d_hidden":H,"workers":W,
 *    "files":[{"name":"worker-0.safetensors","bytes":N,"checksum":"0123456789abcdef"},...],
 *    "experts":[<file index of expert 0>, ...]}
 *
 * Every function returns 0 (or a count) or a negative MOE_ERR_* code with a
 * sentence naming the file in err (errlen bytes; err may be NULL). Nothing
 * here keeps state; functions on different folders may run concurrently. */
#ifndef MOE_MANIFEST_H
#define MOE_MANIFEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOE_MANIFEST_FORMAT "moe-cluster-checkpoint-1"
#define MOE_MANIFEST_NAME "manifest.json"

struct moe_manifest_file {
    char name[128];            /* a plain file name: non-empty, no '/', not "." or ".." */
    uint64_t bytes;            /* size of the whole file (at most INT64_MAX) */
    uint64_t checksum;
};

struct moe_manifest {
    int64_t step;              /* >= 0 */
    uint32_t epoch, placement_version;
    int n_experts, d_model, d_hidden, workers; /* all >= 1 */
    int n_files;               /* >= 1 */
    struct moe_manifest_file *files; /* malloc'd, n_files entries, distinct names */
    int *expert_file;          /* malloc'd, n_experts entries: index into files */
};

/* "DIR/step-%08lld" into out (cap bytes, truncated). */
void moe_manifest_folder(const char *dir, int64_t step, char *out, size_t cap);
/* The same path, created with its parent dir if missing (each member of a
 * checkpoint writes its files there). */
int moe_manifest_make_folder(const char *dir, int64_t step, char *out, size_t cap, char *err,
                             size_t errlen);

/* Checksum (as in the manifest) and size of the whole file at path, read in
 * 1 MiB chunks. Returns 0, MOE_ERR_NOTFOUND or MOE_ERR_IO. */
int moe_manifest_file_checksum(const char *path, uint64_t *sum, uint64_t *bytes, char *err,
                               size_t errlen);

/* Writes FOLDER/manifest.json atomically: a temp name in the folder, fsync,
 * rename, fsync of the folder. The manifest is validated first (the checks
 * of moe_manifest_read), so a manifest this writes always reads back.
 * Returns 0, MOE_ERR_FORMAT / MOE_ERR_RANGE (invalid manifest), MOE_ERR_NOMEM
 * or MOE_ERR_IO; on failure before the rename nothing is left behind. */
int moe_manifest_write(const char *folder, const struct moe_manifest *m, char *err, size_t errlen);

/* Parses and validates FOLDER/manifest.json into m (overwritten, not freed;
 * free with moe_manifest_free): the format string, every key's type and
 * range, file names (plain, distinct, shorter than 128 bytes), checksums of
 * 16 hex digits, one expert index in range per expert. Unknown keys are
 * ignored. Returns 0, MOE_ERR_NOTFOUND (no manifest: not committed),
 * MOE_ERR_VERSION (another "moe-cluster-checkpoint-N"), MOE_ERR_FORMAT,
 * MOE_ERR_RANGE, MOE_ERR_NOMEM or MOE_ERR_IO; on error m is left empty. */
int moe_manifest_read(const char *folder, struct moe_manifest *m, char *err, size_t errlen);

/* Recomputes every listed file's size and checksum. Returns 0,
 * MOE_ERR_NOTFOUND (a listed file is missing), MOE_ERR_FORMAT (size or
 * checksum mismatch, e.g. "DIR/step-00000012/server-1.safetensors: checksum
 * mismatch (file is corrupted): manifest says X, file has Y") or MOE_ERR_IO;
 * stops at the first bad file. */
int moe_manifest_verify(const char *folder, const struct moe_manifest *m, char *err, size_t errlen);

/* The same check for file i of the manifest only (a reader that needs a
 * few of the files, e.g. an expert server loading its experts). */
int moe_manifest_verify_file(const char *folder, const struct moe_manifest *m, int i, char *err,
                             size_t errlen);

/* Frees what read allocated and zeroes m; NULL-safe, idempotent. */
void moe_manifest_free(struct moe_manifest *m);

/* The newest folder DIR/step-%08lld (exactly that name) whose manifest reads,
 * names the same step and, if verify, verifies. A folder without a manifest
 * (in progress, or abandoned) is skipped with an info line; an unreadable,
 * inconsistent or corrupted one is skipped with moe_warn naming the reason.
 * Fills out (the folder's path, cap bytes) and m (as moe_manifest_read).
 * Returns 0, MOE_ERR_NOTFOUND with a sentence if there is none (a missing DIR
 * too), MOE_ERR_RANGE if the path does not fit in cap, MOE_ERR_IO, or
 * MOE_ERR_NOMEM. */
int moe_manifest_latest(const char *dir, bool verify, char *out, size_t cap,
                        struct moe_manifest *m, char *err, size_t errlen);

/* Keeps the `keep` (>= 1) newest committed checkpoints of dir (committed: the
 * manifest reads; files are not re-checksummed) and removes every other
 * step-%08lld folder older than the newest committed one, committed or not.
 * Folders newer than the newest committed one are never touched (they may be
 * in progress); with no committed checkpoint nothing is removed. A folder is
 * removed by unlinking its manifest first (so a half-removed folder never
 * looks committed), then its other files (folders are flat), then itself.
 * Returns the number of folders removed (0 if dir does not exist),
 * MOE_ERR_RANGE for keep < 1, MOE_ERR_IO if dir cannot be listed or a folder
 * could not be removed completely (every other folder is still tried; each
 * failure is logged with moe_warn), or MOE_ERR_NOMEM. */
int moe_manifest_prune(const char *dir, int keep);

/* Removes every step-%08lld folder of dir newer than committed_step (-1:
 * all) that has no manifest: the remains of checkpoints that failed or were
 * abandoned (a rollback, a stop). Committed folders are never touched.
 * Returns the number removed (0 if dir does not exist) or MOE_ERR_IO /
 * MOE_ERR_NOMEM; each failure is logged. Only the coordinator, when no
 * checkpoint is in progress, may call it. */
int moe_manifest_remove_uncommitted(const char *dir, int64_t committed_step);

#endif
