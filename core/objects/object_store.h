// Object refs: tensors stay in the memory of the rank that produced them; a small ObjectRef names
// them and can travel to any rank, which pulls the bytes straight from the owner.
//
// Design (docs/transport.md, "Object refs"): every rank of the store's communicator runs one
// server thread that answers requests for its own objects over a private duplicate of the
// communicator. get(ref) sends a tiny request to the owner and posts receives for the reply header
// and for every tensor straight into the destination; the owner's server sends each tensor from
// the stored buffer (no copy on either side beyond what MPI does). Needs MPI_THREAD_MULTIPLE.
//
// Contract
//  * ObjectStore::create() and destruction (or shutdown()) are collective over `comm`.
//    Destruction waits (bounded by the store's timeout) until every rank is done, then stops the
//    server thread.
//  * put() is local: the store takes the tensors (owning or borrowed, see Tensor) and returns a ref.
//    The object lives until it has been released `holders` times (by any ranks), or until the
//    owner calls free(). release() is cheap and asynchronous; retain() adds a holder and waits for
//    the owner's acknowledgement, so a holder can retain before handing the ref on and release
//    after, and the count never drops to zero in between.
//  * get()/get_into() may be called on any rank, any number of times, while the object lives; they
//    fail with Status::not_found for a freed or unknown object, and with Status::timeout (clear
//    message: owner rank and host, what to do) when the owner does not answer in time (dead or
//    hung). After a timeout the destination may still be written by MPI: abort the job.
//  * wait_freed() and free() are for the owner only.
//  * Thread-safety: the public methods may be called from several threads of the owning process.
//  * Memory: host tensors only (device tensors need a CUDA-aware MPI or the UCX/NCCL backends;
//    put() rejects them with a message).
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "core/transport/transport.h"

namespace mobula {

struct TensorMeta {
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  size_t count() const;
  size_t bytes() const { return count() * dtype_size(dtype); }
  bool operator==(const TensorMeta&) const = default;
};

// A tensor handed to or returned by the store: metadata + memory. `keep` owns the memory (or is
// empty for borrowed memory, which the caller keeps alive until the object is freed).
struct Tensor {
  TensorMeta meta;
  Buffer buf;
  std::shared_ptr<void> keep;

  template <class T>
  static Tensor from_vector(std::vector<T> v, std::vector<int64_t> shape) {
    auto owned = std::make_shared<std::vector<T>>(std::move(v));
    Tensor t{{dtype_of<T>(), std::move(shape)}, host_buffer(std::span<T>(*owned)), owned};
    return t;
  }
  // Zeroed host memory for `meta`.
  static Tensor allocate(const TensorMeta& meta);
  // Memory the caller owns and keeps alive until the object is freed (wait_freed()).
  static Tensor borrow(Buffer b, std::vector<int64_t> shape) { return {{b.dtype, std::move(shape)}, b, nullptr}; }
  template <class T>
  std::span<T> as() const {
    return {static_cast<T*>(buf.data), buf.count};
  }
};

struct ObjectRef {
  int owner = -1;  // rank in the store's communicator
  uint64_t id = 0;
  MemoryPlace place = MemoryPlace::kHost;
  std::vector<TensorMeta> tensors;

  size_t bytes() const;
  // A compact little-endian encoding; parse() validates everything (data from the network).
  std::vector<std::byte> serialize() const;
  static Result<ObjectRef> parse(std::span<const std::byte> bytes);
  bool operator==(const ObjectRef&) const = default;
};

struct ObjectStoreOptions {
  std::chrono::milliseconds timeout{60000};  // default for get/retain/wait_freed and shutdown
  int idle_sleep_us = 20;                    // server thread back-off when no request is pending
};

class ObjectStore {
 public:
  static Result<std::unique_ptr<ObjectStore>> create(MPI_Comm comm, const ObjectStoreOptions& opt = {});
  ~ObjectStore();
  ObjectStore(const ObjectStore&) = delete;
  ObjectStore& operator=(const ObjectStore&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }

  Result<ObjectRef> put(std::vector<Tensor> tensors, int holders = 1);
  // Into new host buffers.
  Result<std::vector<Tensor>> get(const ObjectRef& ref, std::chrono::milliseconds timeout = {});
  // Into the caller's buffers: one per tensor, each exactly the tensor's bytes.
  Status get_into(const ObjectRef& ref, std::span<const Buffer> dst, std::chrono::milliseconds timeout = {});
  Status retain(const ObjectRef& ref, std::chrono::milliseconds timeout = {});
  Status release(const ObjectRef& ref);
  Status free(const ObjectRef& ref);
  Status wait_freed(const ObjectRef& ref, std::chrono::milliseconds timeout = {});
  // Objects this rank owns and still holds.
  size_t live_objects() const;
  // Fault injection for tests: while false, this rank's server leaves requests unanswered (it looks
  // hung to every other rank); requests are answered once it is true again.
  void set_serving(bool on) { serving_ = on; }
  // Collective, bounded: waits until every rank arrives (or the timeout), then stops the server.
  Status shutdown();

 private:
  struct Object {
    std::vector<Tensor> tensors;
    int holders = 1;
  };
  ObjectStore() = default;
  void serve();
  void drop_holder(uint64_t id);
  std::string where() const;
  std::chrono::milliseconds or_default(std::chrono::milliseconds t) const;
  Status transfer(const ObjectRef& ref, std::span<const Buffer> dst, std::chrono::milliseconds timeout,
                  std::shared_ptr<void> keep_on_timeout);
  int next_reply_tag();

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  ObjectStoreOptions opt_;
  mutable std::mutex mu_;
  std::condition_variable freed_;
  std::map<uint64_t, std::shared_ptr<Object>> objects_;
  uint64_t next_id_ = 1;
  std::atomic<uint32_t> reply_seq_{0};
  int reply_tags_ = 1 << 20;  // reply tags cycle through [kFirstReplyTag, kFirstReplyTag + 2 * reply_tags_)
  std::atomic<bool> stop_{false};
  std::atomic<bool> serving_{true};
  bool shut_ = false;
  std::thread server_;
  std::vector<std::shared_ptr<void>> graveyard_;  // destinations of timed-out transfers
};

}  // namespace mobula
