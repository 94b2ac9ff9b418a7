#pragma once
// The one place where a Status from the device becomes an NBD error value.

#include <cstdint>

#include "base/status.h"

namespace nbd {

// Maps an errno to the closest NBD error (EIO, ENOSPC, EPERM, EINVAL, ENOTSUP, ESHUTDOWN).
uint32_t ToNbdError(const base::Status& status);

}  // namespace nbd
