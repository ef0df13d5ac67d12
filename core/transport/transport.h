// Transport: moves tensors rank-to-rank inside a group of ranks (gloo-style, design.md §3).
//
// A Transport is bound to one MPI communicator (its group): ranks are the communicator's ranks.
// Backends live in core/transport/<name>/ (mpi, ucx, nccl) behind this interface; algorithms see
// only this header. make_transport("mpi" | "ucx" | "nccl", comm) picks one by name.
//
// Contract
//  * Buffers are spans tagged with their memory place (host or device) and element type: a Buffer
//    does not own memory. The caller keeps the memory alive and untouched until the request that
//    uses it has completed (test() returned true or wait() returned OK). After a request failed or
//    timed out the memory may still be written/read by the backend: treat the buffer and the
//    transport as broken (see Failure below).
//  * Every operation is non-blocking: it starts the operation and returns a Request. Request::wait()
//    returns within the operation's timeout (Options::timeout, from the moment it was started): OK
//    when complete, Status::timeout when a peer did not take part in time (a hung or dead peer never
//    hangs the caller), another error when the backend failed.
//  * send/recv are local (only the two peers take part); messages between the same pair with the
//    same tag arrive in the order they were sent. User tags are in [0, kMaxUserTag].
//  * broadcast, allreduce, allgather and barrier are collective: every rank of the group calls
//    them in the same order with matching arguments (same count and dtype; same root).
//  * allreduce sums (or averages) elementwise in a fixed order, rank 0 + rank 1 + ... + rank n-1,
//    for host buffers on every backend (mpi, ucx): the result bits depend only on the inputs and
//    the rank count, not on timing, bucket size or the MPI library's algorithm choice. NCCL (device
//    buffers) uses ncclAllReduce: deterministic for a fixed rank count, topology and NCCL version.
//  * Threads: a Transport and its requests are used by one thread at a time (not thread-safe).
//    Different Transport objects may be used from different threads when MPI provides
//    MPI_THREAD_MULTIPLE.
//  * Failure: a timeout or error leaves the group in an unknown state (a peer may have died half
//    way). Callers report it and abort the job (MPI_Abort) so the restart logic takes over; the
//    transport must not be used for further operations. Destroying it is always safe.
//  * Creation (make_transport) and destruction are collective over the communicator.
#pragma once

#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#include "core/runtime/status.h"
#include "core/transport/choice.h"

namespace mobula {

enum class DType : uint8_t { kU8 = 0, kI32, kI64, kF32, kF64, kBF16 };
size_t dtype_size(DType t);
const char* dtype_name(DType t);

template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::kF32;
  if constexpr (std::is_same_v<T, double>) return DType::kF64;
  if constexpr (std::is_same_v<T, int32_t>) return DType::kI32;
  if constexpr (std::is_same_v<T, int64_t>) return DType::kI64;
  if constexpr (std::is_same_v<T, uint8_t> || std::is_same_v<T, std::byte> || std::is_same_v<T, char>)
    return DType::kU8;
  // Anything else (uint64_t, int16_t, ...) has no DType: a silent byte mapping would send 1/8 of
  // a uint64_t and truncate the peer's message.
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, int32_t> ||
                    std::is_same_v<T, int64_t> || std::is_same_v<T, uint8_t> || std::is_same_v<T, std::byte> ||
                    std::is_same_v<T, char>,
                "no DType for this element type");
  return DType::kU8;
}

// A non-owning span of `count` elements of `dtype` at `data`, in host or device memory.
struct Buffer {
  void* data = nullptr;
  size_t count = 0;
  DType dtype = DType::kU8;
  MemoryPlace place = MemoryPlace::kHost;

  size_t bytes() const { return count * dtype_size(dtype); }
  // Elements [first, first + n) of this buffer.
  Buffer slice(size_t first, size_t n) const {
    return {static_cast<std::byte*>(data) + first * dtype_size(dtype), n, dtype, place};
  }
};

template <class T>
Buffer host_buffer(std::span<T> s) {
  using U = std::remove_const_t<T>;
  return {const_cast<U*>(s.data()), s.size(), dtype_of<U>(), MemoryPlace::kHost};
}
template <class T>
Buffer host_buffer(T* p, size_t n) {
  return host_buffer(std::span<T>(p, n));
}
enum class ReduceOp { kSum, kAvg };

struct Options {
  int tag = 0;  // send/recv only; [0, kMaxUserTag]
  std::chrono::milliseconds timeout{60000};
};

constexpr int kMaxUserTag = 65535;

// A started operation. Not copyable; destroying a request that has not completed leaves the
// operation running in the backend (its buffers must stay alive: see Failure above).
class Request {
 public:
  using Clock = std::chrono::steady_clock;
  explicit Request(Clock::time_point deadline) : deadline_(deadline) {}
  virtual ~Request() = default;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  // Progresses the operation without blocking: true when complete, false while running, an error
  // status when it failed. After the deadline a still running operation gives Status::timeout.
  virtual Result<bool> test() = 0;
  // Blocks (progressing the backend) until test() is true or fails.
  Status wait();
  Clock::time_point deadline() const { return deadline_; }

 protected:
  Clock::time_point deadline_;
};
using RequestPtr = std::unique_ptr<Request>;

// Waits for every request in order; returns the first error (the remaining ones are still waited
// for up to their own deadlines so their buffers can be released).
Status wait_all(std::span<RequestPtr> reqs);

class Transport {
 public:
  virtual ~Transport() = default;
  Transport() = default;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  virtual const char* name() const = 0;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Whether buffers at `place` can be passed to this transport.
  virtual bool supports(MemoryPlace place) const = 0;

  // Local: sends `buf` to rank `dst`. The receiver posts a recv of the same byte size.
  virtual Result<RequestPtr> isend(Buffer buf, int dst, const Options& opt = {}) = 0;
  // Local: receives exactly buf.bytes() bytes from rank `src` (a size mismatch is an error).
  virtual Result<RequestPtr> irecv(Buffer buf, int src, const Options& opt = {}) = 0;
  // Collective: root's `buf` ends up in every rank's `buf`.
  virtual Result<RequestPtr> ibroadcast(Buffer buf, int root, const Options& opt = {}) = 0;
  // Collective: in place, every rank ends with the elementwise sum (or mean) of all ranks' `buf`.
  // Floating-point and integer types (not bf16); kAvg needs a floating-point type.
  virtual Result<RequestPtr> iallreduce(Buffer buf, ReduceOp op, const Options& opt = {}) = 0;
  // Collective: `out` (size() * in.count elements) gets rank r's `in` at offset r * in.count.
  virtual Result<RequestPtr> iallgather(Buffer in, Buffer out, const Options& opt = {}) = 0;
  // Collective: completes when every rank has started the barrier.
  virtual Result<RequestPtr> ibarrier(const Options& opt = {}) = 0;

  // Blocking forms: start + wait.
  Status send(Buffer buf, int dst, const Options& opt = {});
  Status recv(Buffer buf, int src, const Options& opt = {});
  Status broadcast(Buffer buf, int root, const Options& opt = {});
  Status allreduce(Buffer buf, ReduceOp op, const Options& opt = {});
  Status allgather(Buffer in, Buffer out, const Options& opt = {});
  Status barrier(const Options& opt = {});
};

// Collective over `comm`: creates the named backend ("mpi", "ucx", "nccl") over a duplicate of
// `comm` (the caller's communicator is not used for traffic). Unknown or not built names and
// backends that cannot start (no GPU for nccl) give an error saying what to do. The choice is
// logged at debug level.
Result<std::unique_ptr<Transport>> make_transport(const std::string& name, MPI_Comm comm);

// "where": "rank R of <backend> group (world rank W, host H)" for error messages.
std::string transport_where(const char* backend, int rank);

}  // namespace mobula
