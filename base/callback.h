#pragma once
// Callback<R(Args...)>: a move-only callable for the data path's completions, which keeps a
// closure of up to kInlineBytes in place instead of on the heap.
//
// Why not std::function: libstdc++ keeps only trivially copyable closures of at most 16 bytes in
// place, so every completion that captures a shared_ptr (a write's state, a connection) costs a
// malloc and a free. A mirrored write made about a dozen of those. std::move_only_function is
// C++23, and its in-place room is no larger; no Debian-packaged library offers a callable whose
// room can be chosen.
//
// Contract:
// - Holds any callable that can be invoked as R(Args...) and moved; it need not be copyable, and
//   a Callback cannot be copied. A closure larger than kInlineBytes, more aligned than
//   max_align_t, or whose move may throw, goes to the heap (one allocation, as std::function).
// - A moved-from Callback is empty. Calling an empty Callback is a CHECK failure.
// - operator() is const, as std::function's: the closure is the caller's to run, not part of the
//   Callback's value. Not thread-safe; the loop thread owns it like the rest of its state.

#include <cstddef>
#include <functional>
#include <new>
#include <type_traits>
#include <utility>

#include "base/check.h"

namespace base {

// Room for the largest closure on the data path (the standby's write completion: `this`, the
// payload's pool buffer, a weak_ptr to the link, the sequence number, the arrival time and two
// flags, 80 bytes); with the ops pointer the whole Callback is 96 bytes.
inline constexpr std::size_t kCallbackInlineBytes = 88;

template <typename Signature, std::size_t kInlineBytes = kCallbackInlineBytes>
class Callback;

template <typename R, typename... Args, std::size_t kInlineBytes>
class Callback<R(Args...), kInlineBytes> {
 public:
  Callback() noexcept = default;
  Callback(std::nullptr_t) noexcept {}  // NOLINT(google-explicit-constructor): as std::function

  template <typename F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, Callback> &&
             std::is_invocable_r_v<R, std::remove_cvref_t<F>&, Args...>)
  Callback(F&& f) {  // NOLINT(google-explicit-constructor): a lambda converts, as std::function
    using Stored = std::remove_cvref_t<F>;
    if constexpr (std::is_pointer_v<Stored> || std::is_member_pointer_v<Stored>) {
      if (f == nullptr) {
        return;
      }
    }
    if constexpr (kFitsInPlace<Stored>) {
      ::new (static_cast<void*>(storage_)) Stored(std::forward<F>(f));
      ops_ = &kInPlaceOps<Stored>;
    } else {
      *reinterpret_cast<Stored**>(storage_) = new Stored(std::forward<F>(f));
      ops_ = &kOnHeapOps<Stored>;
    }
  }

  Callback(Callback&& other) noexcept { TakeFrom(other); }

  Callback& operator=(Callback&& other) noexcept {
    if (this != &other) {
      Reset();
      TakeFrom(other);
    }
    return *this;
  }

  Callback& operator=(std::nullptr_t) noexcept {
    Reset();
    return *this;
  }

  Callback(const Callback&) = delete;
  Callback& operator=(const Callback&) = delete;

  ~Callback() { Reset(); }

  explicit operator bool() const noexcept { return ops_ != nullptr; }

  R operator()(Args... args) const {
    CHECK(ops_ != nullptr);
    return ops_->invoke(storage_, std::forward<Args>(args)...);
  }

  // Whether a closure of type F would be kept in place (for tests and static_asserts).
  template <typename F>
  static constexpr bool kFitsInPlace =
      sizeof(F) <= kInlineBytes && alignof(F) <= alignof(std::max_align_t) &&
      std::is_nothrow_move_constructible_v<F>;

 private:
  struct Ops {
    R (*invoke)(std::byte* storage, Args&&... args);
    // Moves the closure from `from` into the empty `to` and leaves `from` destroyed.
    void (*relocate)(std::byte* from, std::byte* to) noexcept;
    void (*destroy)(std::byte* storage) noexcept;
  };

  template <typename F>
  static constexpr Ops kInPlaceOps = {
      [](std::byte* s, Args&&... args) -> R {
        return std::invoke(*std::launder(reinterpret_cast<F*>(s)), std::forward<Args>(args)...);
      },
      [](std::byte* from, std::byte* to) noexcept {
        F* source = std::launder(reinterpret_cast<F*>(from));
        ::new (static_cast<void*>(to)) F(std::move(*source));
        source->~F();
      },
      [](std::byte* s) noexcept { std::launder(reinterpret_cast<F*>(s))->~F(); },
  };

  template <typename F>
  static constexpr Ops kOnHeapOps = {
      [](std::byte* s, Args&&... args) -> R {
        return std::invoke(**reinterpret_cast<F**>(s), std::forward<Args>(args)...);
      },
      [](std::byte* from, std::byte* to) noexcept {
        *reinterpret_cast<F**>(to) = *reinterpret_cast<F**>(from);
      },
      [](std::byte* s) noexcept { delete *reinterpret_cast<F**>(s); },
  };

  void TakeFrom(Callback& other) noexcept {
    if (other.ops_ != nullptr) {
      other.ops_->relocate(other.storage_, storage_);
      ops_ = std::exchange(other.ops_, nullptr);
    }
  }

  void Reset() noexcept {
    // Cleared first: the closure's destructor may release what leads back to this Callback.
    if (const Ops* ops = std::exchange(ops_, nullptr); ops != nullptr) {
      ops->destroy(storage_);
    }
  }

  static_assert(kInlineBytes >= sizeof(void*), "the heap case keeps a pointer in place");

  alignas(std::max_align_t) mutable std::byte storage_[kInlineBytes];
  const Ops* ops_ = nullptr;
};

}  // namespace base
