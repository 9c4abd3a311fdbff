#include "moe_sec.h"

#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "moe_err.h"
#include "moe_file.h"
#include "moe_log.h"

static const char *const role_file[4] = {NULL, "worker", "server", "coordinator"};

const char *moe_sec_role_name(int role)
{
    return role >= MOE_SEC_WORKER && role <= MOE_SEC_COORDINATOR ? role_file[role]
                                                                 : "unauthenticated";
}

/* ------------------------------------------------------------------------ */
/* Key files: INI, section [curve], keys public-key and secret-key (Z85). */

struct key_file {
    char role[16];
    char public_key[MOE_SEC_KEY_LEN + 1], secret_key[MOE_SEC_KEY_LEN + 1];
    char bad[64]; /* the first key with a malformed value */
};

static bool is_z85_key(const char *v)
{
    if (strlen(v) != MOE_SEC_KEY_LEN)
        return false;
    uint8_t raw[32];
    return zmq_z85_decode(raw, v) != NULL;
}

static int on_key_entry(void *user, const char *section, const char *name, const char *value)
{
    struct key_file *k = user;
    if (strcmp(section, "curve") != 0)
        return 1;
    char *dst = !strcmp(name, "public-key")   ? k->public_key
                : !strcmp(name, "secret-key") ? k->secret_key
                                              : NULL;
    if (!strcmp(name, "role"))
        snprintf(k->role, sizeof k->role, "%s", value);
    if (dst) {
        if (is_z85_key(value))
            memcpy(dst, value, MOE_SEC_KEY_LEN + 1);
        else if (!k->bad[0])
            snprintf(k->bad, sizeof k->bad, "%s", name);
    }
    return 1;
}

/* Reads DIR/ROLE.EXT; 0, MOE_ERR_NOTFOUND when missing, or an error. */
static int read_key_file(const char *dir, const char *role, const char *ext, bool secret,
                         struct key_file *k, char *err, size_t errlen)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s.%s", dir, role, ext);
    memset(k, 0, sizeof *k);
    FILE *f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? MOE_ERR_NOTFOUND
                               : moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot read: %s",
                                              path, strerror(errno));
    struct stat st;
    if (secret && fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
        moe_warn("%s: the secret key can be read by other users (mode %03o): chmod 600 it", path,
                 (unsigned)(st.st_mode & 0777));
    const int line = ini_parse_file(f, on_key_entry, k);
    fclose(f);
    if (line != 0)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen, "%s:%d: not a key file (moectl keygen "
                            "writes them)", path, line);
    if (k->bad[0])
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen, "%s: %s is not a %d-character Z85 key",
                            path, k->bad, MOE_SEC_KEY_LEN);
    if (k->role[0] && strcmp(k->role, role) != 0)
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen, "%s holds the key of role %s, not %s",
                            path, k->role, role);
    if (!k->public_key[0] || (secret && !k->secret_key[0]))
        return moe_err_fail(MOE_ERR_FORMAT, err, errlen, "%s: no %s in its [curve] section", path,
                            k->public_key[0] ? "secret-key" : "public-key");
    if (secret) {
        char derived[MOE_SEC_KEY_LEN + 1];
        if (zmq_curve_public(derived, k->secret_key) != 0 || strcmp(derived, k->public_key) != 0)
            return moe_err_fail(MOE_ERR_FORMAT, err, errlen,
                                "%s: its public-key is not the one of its secret-key", path);
    }
    return 0;
}

int moe_sec_init(struct moe_sec *s, int role, const char *dir, bool insecure, char *err,
                 size_t errlen)
{
    memset(s, 0, sizeof *s);
    s->role = role;
    s->insecure = insecure;
    if (!dir || !dir[0])
        return 0;
    if (insecure) {
        moe_warn("--insecure: the keys of %s are not used", dir);
        return 0;
    }
    if (zmq_has("curve") != 1)
        return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                            "this libzmq has no CURVE: keys cannot be used (rebuild libzmq with "
                            "libsodium, or run --insecure on a trusted network)");
    struct key_file k;
    int rc = read_key_file(dir, role_file[role], "key", true, &k, err, errlen);
    if (rc == MOE_ERR_NOTFOUND)
        return moe_err_fail(MOE_ERR_NOTFOUND, err, errlen,
                            "%s/%s.key: missing: this %s needs its role's key (moectl keygen %s "
                            "writes one; copy it here from the cluster's key directory)",
                            dir, role_file[role], role_file[role], dir);
    if (rc)
        return rc;
    memcpy(s->own_secret, k.secret_key, sizeof s->own_secret);
    memcpy(s->public_of[role], k.public_key, sizeof s->public_of[role]);
    for (int r = MOE_SEC_WORKER; r <= MOE_SEC_COORDINATOR; r++) {
        if (r == role)
            continue;
        rc = read_key_file(dir, role_file[r], "pub", false, &k, err, errlen);
        if (rc == MOE_ERR_NOTFOUND) /* a .key holds the public key too */
            rc = read_key_file(dir, role_file[r], "key", false, &k, err, errlen);
        if (rc == MOE_ERR_NOTFOUND)
            return moe_err_fail(MOE_ERR_NOTFOUND, err, errlen,
                                "%s/%s.pub: missing: every process needs the public keys of the "
                                "three roles (copy them from the cluster's key directory)",
                                dir, role_file[r]);
        if (rc)
            return rc;
        memcpy(s->public_of[r], k.public_key, sizeof s->public_of[r]);
    }
    s->keys = true;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Endpoints */

static bool is_tcp(const char *endpoint)
{
    return strncmp(endpoint, "tcp://", 6) == 0;
}

bool moe_sec_curve(const struct moe_sec *s, const char *endpoint)
{
    return s->keys && !s->insecure && is_tcp(endpoint);
}

int moe_sec_check(const struct moe_sec *s, const char *endpoint, const char *what, char *err,
                  size_t errlen)
{
    if (!is_tcp(endpoint) || s->keys || s->insecure)
        return 0;
    return moe_err_fail(MOE_ERR_CONFIG, err, errlen,
                        "%s (%s) is on TCP, which needs the cluster's keys: create them with "
                        "`moectl keygen DIR` and give every process --keys DIR (or --insecure "
                        "for plain TCP on a network you trust)",
                        what, endpoint);
}

int moe_sec_check_list(const struct moe_sec *s, const char *list, const char *what, char *err,
                       size_t errlen)
{
    char one[512];
    while (*list) {
        size_t n = strcspn(list, ",");
        while (n && *list == ' ') {
            list++;
            n--;
        }
        snprintf(one, sizeof one, "%.*s", (int)(n < sizeof one ? n : sizeof one - 1), list);
        int rc = moe_sec_check(s, one, what, err, errlen);
        if (rc)
            return rc;
        list += n;
        if (*list == ',')
            list++;
    }
    return 0;
}

static const char *const domain_name[] = {"moe-coordinator", "moe-server", "moe-ring"};

int moe_sec_serve(const struct moe_sec *s, void *sock, int domain, const char *endpoint, char *err,
                  size_t errlen)
{
    int rc = moe_sec_check(s, endpoint, "a socket of this process", err, errlen);
    if (rc)
        return rc;
    if (moe_sec_curve(s, endpoint)) {
        const int on = 1;
        const char *d = domain_name[domain];
        if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &on, sizeof on) ||
            zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, s->own_secret, MOE_SEC_KEY_LEN) ||
            zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, d, strlen(d)))
            return moe_err_fail(MOE_ERR_IO, err, errlen, "cannot set up CURVE on %s: %s",
                                endpoint, zmq_strerror(zmq_errno()));
    }
    return 0;
}

int moe_sec_bind(const struct moe_sec *s, void *sock, int domain, const char *endpoint, char *err,
                 size_t errlen)
{
    int rc = moe_sec_serve(s, sock, domain, endpoint, err, errlen);
    if (rc)
        return rc;
    if (zmq_bind(sock, endpoint) != 0)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "cannot bind %s: %s", endpoint,
                            zmq_strerror(zmq_errno()));
    return 0;
}

int moe_sec_connect(const struct moe_sec *s, void *sock, int peer_role, const char *endpoint,
                    char *err, size_t errlen)
{
    int rc = moe_sec_check(s, endpoint, moe_sec_role_name(peer_role), err, errlen);
    if (rc)
        return rc;
    if (moe_sec_curve(s, endpoint)) {
        if (peer_role < MOE_SEC_WORKER || peer_role > MOE_SEC_COORDINATOR ||
            !s->public_of[peer_role][0])
            return moe_err_fail(MOE_ERR_CONFIG, err, errlen, "no public key of the %s role",
                                moe_sec_role_name(peer_role));
        if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, s->public_of[peer_role], MOE_SEC_KEY_LEN) ||
            zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, s->public_of[s->role], MOE_SEC_KEY_LEN) ||
            zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, s->own_secret, MOE_SEC_KEY_LEN))
            return moe_err_fail(MOE_ERR_IO, err, errlen, "cannot set up CURVE to %s: %s",
                                endpoint, zmq_strerror(zmq_errno()));
    }
    if (zmq_connect(sock, endpoint) != 0)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "cannot connect to %s: %s", endpoint,
                            zmq_strerror(zmq_errno()));
    return 0;
}

int moe_sec_peer(const struct moe_wire_msg *m)
{
    for (int r = MOE_SEC_WORKER; r <= MOE_SEC_COORDINATOR; r++)
        if (strcmp(m->user_id, role_file[r]) == 0)
            return r;
    return MOE_SEC_NONE;
}

/* ------------------------------------------------------------------------ */
/* keygen */

static int write_key(const char *dir, const char *role, const char *ext, const char *pub,
                     const char *sec, char *err, size_t errlen)
{
    char path[1200], tmp[1250], text[512];
    snprintf(path, sizeof path, "%s/%s.%s", dir, role, ext);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int n;
    if (sec)
        n = snprintf(text, sizeof text,
                     "# CURVE key of the %s role of a moe cluster (moectl keygen).\n"
                     "# Keep it secret: it admits its holder as a %s.\n"
                     "[curve]\nrole = %s\npublic-key = %s\nsecret-key = %s\n",
                     role, role, role, pub, sec);
    else
        n = snprintf(text, sizeof text,
                     "# CURVE public key of the %s role of a moe cluster (moectl keygen).\n"
                     "[curve]\nrole = %s\npublic-key = %s\n",
                     role, role, pub);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, sec ? 0600 : 0644);
    if (fd < 0)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot create: %s", tmp,
                            strerror(errno));
    int rc = moe_write_all(fd, text, (size_t)n);
    if (!rc && fsync(fd) != 0)
        rc = MOE_ERR_IO;
    close(fd);
    if (rc || rename(tmp, path) != 0) {
        unlink(tmp);
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot write: %s", path,
                            strerror(errno));
    }
    return 0;
}

int moe_sec_keygen(const char *dir, bool force, char *err, size_t errlen)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot create the directory: %s", dir,
                            strerror(errno));
    for (int r = MOE_SEC_WORKER; r <= MOE_SEC_COORDINATOR && !force; r++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/%s.key", dir, role_file[r]);
        if (access(path, F_OK) == 0)
            return moe_err_fail(MOE_ERR_STATE, err, errlen,
                                "%s already exists: keys are not replaced unless you give "
                                "--force (every process of the cluster then needs the new ones)",
                                path);
    }
    for (int r = MOE_SEC_WORKER; r <= MOE_SEC_COORDINATOR; r++) {
        char pub[MOE_SEC_KEY_LEN + 1], sec[MOE_SEC_KEY_LEN + 1];
        if (zmq_curve_keypair(pub, sec) != 0)
            return moe_err_fail(MOE_ERR_CONFIG, err, errlen, "cannot make CURVE keys: %s",
                                zmq_strerror(zmq_errno()));
        int rc = write_key(dir, role_file[r], "key", pub, sec, err, errlen);
        if (!rc)
            rc = write_key(dir, role_file[r], "pub", pub, NULL, err, errlen);
        memset(sec, 0, sizeof sec);
        if (rc)
            return rc;
    }
    return moe_fsync_dir(dir) ? moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot sync", dir) : 0;
}

/* ------------------------------------------------------------------------ */
/* Secrets */

bool moe_sec_equal(const char *a, const char *b)
{
    const size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < lb; i++)
        diff |= (unsigned char)(b[i] ^ (i < la ? a[i] : 0));
    return diff == 0;
}

int moe_sec_secret(const char *value, const char *file, const char *env, char *out, size_t cap,
                   char *err, size_t errlen)
{
    const char *from_env = env ? getenv(env) : NULL;
    if (file && file[0]) {
        FILE *f = fopen(file, "r");
        if (!f)
            return moe_err_fail(MOE_ERR_IO, err, errlen, "%s: cannot read the token file: %s",
                                file, strerror(errno));
        if (!fgets(out, (int)cap, f))
            out[0] = '\0';
        fclose(f);
        out[strcspn(out, "\r\n")] = '\0';
        if (!out[0])
            return moe_err_fail(MOE_ERR_FORMAT, err, errlen, "%s: the token file is empty", file);
        return 0;
    }
    snprintf(out, cap, "%s", value && value[0] ? value : from_env ? from_env : "");
    return 0;
}
