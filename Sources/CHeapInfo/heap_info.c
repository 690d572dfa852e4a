#include "heap_info.h"
#include <stdlib.h>
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
#include <malloc.h>

size_t pushfleet_heap_in_use(void) {
    struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}

size_t pushfleet_heap_free(void) {
    struct mallinfo2 info = mallinfo2();
    return info.fordblks;
}
#else
size_t pushfleet_heap_in_use(void) { return 0; }
size_t pushfleet_heap_free(void) { return 0; }
#endif
