/* Available memory and the check before large allocations (see moe_mem.h). */
#include "moe_mem.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe_err.h"

/* One unsigned number from a file holding it alone ("max" and errors: -1). */
static int64_t read_number(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    char buf[64];
    int64_t v = -1;
    if (fgets(buf, sizeof buf, f)) {
        char *end;
        unsigned long long x = strtoull(buf, &end, 10);
        if (end != buf && (*end == '\n' || *end == '\0') && x <= INT64_MAX)
            v = (int64_t)x;
    }
    fclose(f);
    return v;
}

static int64_t meminfo_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    char line[256];
    int64_t v = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long long kb;
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
            v = kb > (unsigned long long)(INT64_MAX / 1024) ? INT64_MAX : (int64_t)kb * 1024;
            break;
        }
    }
    fclose(f);
    return v;
}

int64_t moe_mem_available(void)
{
    const char *fake = getenv("MOE_MEM_AVAILABLE");
    if (fake && *fake) {
        char *end;
        unsigned long long x = strtoull(fake, &end, 10);
        if (*end == '\0' && x <= INT64_MAX)
            return (int64_t)x;
    }
    int64_t avail = meminfo_available();
    /* A container's limit: the process's own cgroup (v2 unified hierarchy
     * mounts it at /sys/fs/cgroup inside a container). */
    const int64_t max = read_number("/sys/fs/cgroup/memory.max"),
                  cur = read_number("/sys/fs/cgroup/memory.current");
    if (max >= 0 && cur >= 0) {
        const int64_t room = max > cur ? max - cur : 0;
        if (avail < 0 || room < avail)
            avail = room;
    }
    return avail;
}

void moe_mem_format(char *buf, size_t cap, double bytes)
{
    if (bytes >= 1e9)
        snprintf(buf, cap, "%.1f GB", bytes / 1e9);
    else if (bytes >= 1e6)
        snprintf(buf, cap, "%.1f MB", bytes / 1e6);
    else
        snprintf(buf, cap, "%.1f KB", bytes / 1e3);
}

int moe_mem_check(uint64_t need, const char *what, char *err, size_t errlen)
{
    const int64_t avail = moe_mem_available();
    if (avail < 0 || need <= (uint64_t)avail)
        return 0;
    char n[32], a[32];
    moe_mem_format(n, sizeof n, (double)need);
    moe_mem_format(a, sizeof a, (double)avail);
    moe_err_set(err, errlen,
                "%s needs about %s (%" PRIu64 " bytes), but only %s (%" PRId64
                " bytes) are available (MemAvailable); choose a smaller model or more expert "
                "servers (--no-memory-check skips this check)",
                what, n, need, a, avail);
    return MOE_ERR_NOMEM;
}
