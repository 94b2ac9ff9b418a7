#include "base/status.h"

#include <cstring>

namespace base {

std::string Status::ToString() const {
  if (ok()) {
    return "OK";
  }
  return message_ + ": " + std::strerror(errno_value_);
}

}  // namespace base
