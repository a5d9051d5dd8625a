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
#endif
