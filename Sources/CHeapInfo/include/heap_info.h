#ifndef PUSHFLEET_HEAP_INFO_H
#define PUSHFLEET_HEAP_INFO_H
#include <stddef.h>

/// Bytes of the malloc heap in use by live allocations (glibc mallinfo2: arenas and mmapped
/// chunks), or 0 where that is not available.
size_t pushfleet_heap_in_use(void);
/// Bytes free in the malloc heap but kept by the allocator (not returned to the system).
size_t pushfleet_heap_free(void);

#endif
