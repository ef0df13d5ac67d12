// Status and Result<T>: recoverable errors are returned, invariants abort (leveldb style).
//
// A Status carries a one-line message meant for the user ("FILE:LINE: KEY: message", or
// "what, where, what to do"). Result<T> is a value or a non-OK Status. Neither throws.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

namespace mobula {

class Status {
 public:
  enum class Code { kOk = 0, kInvalidSpec, kInvalidArgument, kNotFound, kIo, kExternal, kTimeout, kPreempted };

  Status() = default;
  static Status ok() { return Status(); }
  static Status invalid_spec(std::string msg) { return {Code::kInvalidSpec, std::move(msg)}; }
  static Status invalid_argument(std::string msg) { return {Code::kInvalidArgument, std::move(msg)}; }
  static Status not_found(std::string msg) { return {Code::kNotFound, std::move(msg)}; }
  static Status io(std::string msg) { return {Code::kIo, std::move(msg)}; }
  static Status external(std::string msg) { return {Code::kExternal, std::move(msg)}; }
  static Status timeout(std::string msg) { return {Code::kTimeout, std::move(msg)}; }
  // Stopped by a signal at a step boundary after a durable checkpoint: "restart me" (exit 3).
  static Status preempted(std::string msg) { return {Code::kPreempted, std::move(msg)}; }

  bool is_ok() const { return code_ == Code::kOk; }
  explicit operator bool() const { return is_ok(); }
  Code code() const { return code_; }
  const std::string& message() const { return msg_; }
  // Marks a status whose message has already been logged where it arose (before an agreement that
  // may block), so that the code it returns to does not log it a second time.
  Status as_logged() const {
    Status s = *this;
    s.logged_ = true;
    return s;
  }
  bool logged() const { return logged_; }

  // Process exit code for this status: 0 ok, 2 for bad user input (spec, arguments), 1 otherwise.
  int exit_code() const {
    switch (code_) {
      case Code::kOk:
        return 0;
      case Code::kInvalidSpec:
      case Code::kInvalidArgument:
        return 2;
      case Code::kPreempted:
        return 3;
      default:
        return 1;
    }
  }

 private:
  Status(Code c, std::string m) : code_(c), msg_(std::move(m)) {}
  Code code_ = Code::kOk;
  std::string msg_;
  bool logged_ = false;
};

template <class T>
class Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
  Result(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    if (status_.is_ok()) {
      std::fprintf(stderr, "mobula: internal error: Result constructed from an OK status\n");
      std::abort();
    }
  }

  bool is_ok() const { return value_.has_value(); }
  explicit operator bool() const { return is_ok(); }
  const Status& status() const { return status_; }

  T& value() & { return checked(); }
  const T& value() const& { return const_cast<Result*>(this)->checked(); }
  T&& value() && { return std::move(checked()); }
  T* operator->() { return &checked(); }
  const T* operator->() const { return &const_cast<Result*>(this)->checked(); }
  T& operator*() { return checked(); }

 private:
  T& checked() {
    if (!value_) {
      std::fprintf(stderr, "mobula: internal error: value() on an error Result: %s\n", status_.message().c_str());
      std::abort();
    }
    return *value_;
  }
  std::optional<T> value_;
  Status status_;
};

}  // namespace mobula

// Returns from the enclosing function when a Status expression is not OK.
#define MOBULA_RETURN_IF_ERROR(expr)            \
  do {                                          \
    ::mobula::Status mobula_st_ = (expr);       \
    if (!mobula_st_.is_ok()) return mobula_st_; \
  } while (0)
