#ifndef VIRTPORT_CSQLITE_SHIM_H
#define VIRTPORT_CSQLITE_SHIM_H
#include <sqlite3.h>

/* SQLITE_TRANSIENT is a cast macro Swift cannot import. */
static inline sqlite3_destructor_type vp_sqlite_transient(void) { return SQLITE_TRANSIENT; }

/* sqlite3_db_config is variadic: one wrapper per integer option. Returns an SQLite result code. */
static inline int vp_sqlite_db_config_int(sqlite3 *db, int op, int value) {
    int out = 0;
    return sqlite3_db_config(db, op, value, &out);
}

/* sqlite3_config is variadic too. Memory statistics off: no global mutex and counters around every
   allocation (virtport never asks sqlite3_memory_used nor sets a heap limit). Must run before the
   library initialises; SQLITE_MISUSE after that (harmless: the statistics stay on). */
static inline int vp_sqlite_disable_memstatus(void) { return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); }
#endif
