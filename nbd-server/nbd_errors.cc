#include "nbd-server/nbd_errors.h"

#include <cerrno>

#include "nbd-server/protocol.h"

namespace nbd {

uint32_t ToNbdError(const base::Status& status) {
  switch (status.errno_value()) {
    case 0:
      return 0;
    case EPERM:
    case EROFS:
    case EACCES:
      return kErrPerm;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return kErrNoSpace;
    case EINVAL:
      return kErrInvalid;
    case EOVERFLOW:
      return kErrOverflow;
    case ENOTSUP:
      return kErrNotSup;
    case ESHUTDOWN:
      return kErrShutdown;
    case ENOMEM:
      // The spec asks servers to avoid ENOMEM; the client can do nothing useful with it.
      return kErrIo;
    default:
      // Everything else is a failed device as far as the client can tell.
      return kErrIo;
  }
}

uint32_t ToNbdError(const base::Status& status, uint16_t command, uint16_t flags) {
  const uint32_t error = ToNbdError(status);
  const bool fast_zero = command == static_cast<uint16_t>(Command::kWriteZeroes) &&
                         (flags & kCmdFlagFastZero) != 0;
  const bool df_read = command == static_cast<uint16_t>(Command::kRead) && (flags & kCmdFlagDf) != 0;
  if ((error == kErrNotSup && !fast_zero) || (error == kErrOverflow && !df_read)) {
    return kErrIo;
  }
  return error;
}

}  // namespace nbd
