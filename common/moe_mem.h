/* Memory the machine can give: checked before a process allocates a model
 * or a shard, so that a size that cannot fit fails at once with the numbers
 * instead of meeting the OOM killer minutes later (DESIGN §6). Used by the
 * worker (its model and in-process experts) and the expert server (the
 * shard of each epoch). Reads /proc and the cgroup files; keeps no state. */
#ifndef MOE_MEM_H
#define MOE_MEM_H

#include <stddef.h>
#include <stdint.h>

/* Bytes a new allocation can get: MemAvailable of /proc/meminfo, lowered to
 * the room left under a cgroup v2 limit (memory.max - memory.current) when
 * the process runs in one (a container). -1 when neither can be read. The
 * environment variable MOE_MEM_AVAILABLE (bytes) replaces the reading, for
 * tests. Thread-safe. */
int64_t moe_mem_available(void);

/* 0 when `need` bytes fit in moe_mem_available() (or it is unknown); else
 * MOE_ERR_NOMEM with a sentence: "WHAT needs about 11.7 GB (11700000000
 * bytes), but only 8.1 GB (...) are available". */
int moe_mem_check(uint64_t need, const char *what, char *err, size_t errlen);

/* "11.7 GB" / "640.0 MB" / "12.0 KB" into buf. */
void moe_mem_format(char *buf, size_t cap, double bytes);

#endif
