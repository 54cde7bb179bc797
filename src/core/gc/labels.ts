// The labels the garbage collector reads on records (containerd's), apart from the collector so
// that code which only names them (the client) does not load the metadata database.

/** A record with this label is a root: kept whatever references it. */
export const GC_ROOT = "containerd.io/gc.root";
/** A lease or record with this label (an RFC 3339 time) is dropped once that time has passed. */
export const GC_EXPIRE = "containerd.io/gc.expire";
