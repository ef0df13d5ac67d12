// Byte encoding of the queue's journal records and MPI messages: u8/u32/u64 in host byte order,
// strings as u32 length + bytes. Parse never reads past its input (every get checks the length).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace mobula::queue {

class Body {
 public:
  Body& str(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    b_ += s;
    return *this;
  }
  Body& u32(uint32_t v) { return raw(&v, sizeof v); }
  Body& u64(uint64_t v) { return raw(&v, sizeof v); }
  Body& u8(uint8_t v) { return raw(&v, sizeof v); }
  const std::string& bytes() const { return b_; }

 private:
  Body& raw(const void* p, size_t n) {
    b_.append(static_cast<const char*>(p), n);
    return *this;
  }
  std::string b_;
};

class Parse {
 public:
  explicit Parse(const std::string& b) : b_(b) {}
  bool str(std::string* s) {
    uint32_t n = 0;
    if (!u32(&n) || n > b_.size() - pos_) return false;
    s->assign(b_, pos_, n);
    pos_ += n;
    return true;
  }
  bool u32(uint32_t* v) { return raw(v, sizeof *v); }
  bool u64(uint64_t* v) { return raw(v, sizeof *v); }
  bool u8(uint8_t* v) { return raw(v, sizeof *v); }
  bool done() const { return pos_ == b_.size(); }
  size_t left() const { return b_.size() - pos_; }

 private:
  bool raw(void* p, size_t n) {
    if (n > b_.size() - pos_) return false;
    std::memcpy(p, b_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  const std::string& b_;
  size_t pos_ = 0;
};

}  // namespace mobula::queue
