#pragma once
// The one place where a Status from the device becomes an NBD error value.

#include <cstdint>

#include "base/status.h"

namespace nbd {

// Maps an errno to the closest NBD error (EIO, ENOSPC, EPERM, EINVAL, ENOTSUP, ESHUTDOWN).
uint32_t ToNbdError(const base::Status& status);

// The same for the reply to a request of `command` with `flags`. The spec reserves two errors
// for one case each: NBD_ENOTSUP for a WRITE_ZEROES with FAST_ZERO that cannot be fast, and
// NBD_EOVERFLOW for a READ with DF that cannot be one chunk. Any other request that fails with
// them (an odd device, a file system without some operation) gets NBD_EIO.
uint32_t ToNbdError(const base::Status& status, uint16_t command, uint16_t flags);

}  // namespace nbd
