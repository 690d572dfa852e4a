#ifndef PUSHFLEET_CHIREDIS_SHIM_H
#define PUSHFLEET_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#endif
