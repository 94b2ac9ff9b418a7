#pragma once
// Status and Result<T>: how the data path reports errors without exceptions.
//
// A Status is either OK or an errno value plus a human-readable message. The errno is kept
// exactly as the kernel or the validating code produced it; translating it to what a protocol
// can carry (an NBD error, a peer message) happens in one place per protocol, never here.
// Both types are cheap to move and are [[nodiscard]]: ignoring one is a compile error.

#include <cerrno>
#include <optional>
#include <string>
#include <utility>

#include "base/check.h"

namespace base {

class [[nodiscard]] Status {
 public:
  Status() = default;

  static Status Ok() { return Status(); }
  // errno_value must be a positive errno (EIO, EINVAL, ...).
  static Status Error(int errno_value, std::string message) {
    CHECK(errno_value > 0);
    return Status(errno_value, std::move(message));
  }
  // The current errno with a message naming what failed.
  static Status FromErrno(const std::string& what) { return Error(errno, what); }

  bool ok() const { return errno_value_ == 0; }
  int errno_value() const { return errno_value_; }
  const std::string& message() const { return message_; }
  // "message: strerror" or "OK".
  std::string ToString() const;

 private:
  Status(int errno_value, std::string message)
      : errno_value_(errno_value), message_(std::move(message)) {}

  int errno_value_ = 0;
  std::string message_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}             // NOLINT: implicit by design.
  Result(Status status) : status_(std::move(status)) {      // NOLINT: implicit by design.
    CHECK(!status_.ok());
  }

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() {
    CHECK(ok());
    return *value_;
  }
  const T& value() const {
    CHECK(ok());
    return *value_;
  }
  T&& TakeValue() {
    CHECK(ok());
    return std::move(*value_);
  }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace base
