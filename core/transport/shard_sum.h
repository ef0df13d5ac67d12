// Sums over a fixed number of shards, bitwise independent of the group size (docs/rl.md,
// "Determinism").
//
// A step's global batch is cut into S shards (job.shards). Member m of a group of M owns the
// contiguous block of shards [S*m/M, S*(m+1)/M) and computes each of its shards' values on its own.
// The total is the sum of the S values in ONE fixed binary tree over the shard indices: node (l, i)
// covers shards [i*2^l, (i+1)*2^l), its value is value(left) + value(right), or value(left) when the
// right child holds no shard. Floating-point addition is not associative, but a fixed tree with
// fixed leaves is a fixed computation: whoever computes a node and however the shards are spread,
// every node has the same bits, so the weights of a data-parallel job do not depend on the trainer
// count (M <= S) and a job restarts on another count without changing its results.
//
// How: each member folds its own shards as it computes them (a binary-counter stack, so it holds at
// most log2(S) + 1 partial sums), then nodes that span two members' blocks are combined level by
// level: the member owning the right child's first shard sends its value to the owner of the left
// child's first shard, which adds left + right. The root (owned by member 0) is broadcast.
//
// Contract
//  * sum_shards is collective over the transport's group: every member passes the same `shards`
//    and an `out` of the same count. `value(s, buf)` is called on the owning member only, for each
//    of its shards in increasing order, and must fill buf (out.size() elements) with shard s's value.
//  * Host buffers. Every member ends with the same bits in `out`; out is written only after every
//    value() call, so value() may use `out`'s memory as scratch.
//  * Errors: the first failing value() or transfer is returned; a failed transfer leaves the group
//    broken (transport.h, Failure).
#pragma once

#include <functional>
#include <span>

#include "core/runtime/status.h"
#include "core/transport/transport.h"

namespace mobula {

struct ShardRange {
  int first = 0, end = 0;  // [first, end)
  int size() const { return end - first; }
};

// The shards member `member` of `members` owns: a contiguous block (empty when members > shards).
ShardRange shards_of(int member, int members, int shards);
// The member that owns shard s.
int owner_of_shard(int shard, int members, int shards);

template <class T>
using ShardValueFn = std::function<Status(int shard, std::span<T> out)>;

// `flow` (optional): the communication phase (not the value() calls) is accounted to that flow's
// mobula_transport_{bytes,seconds}_total (core/metrics/registry.h, FlowTimer).
template <class T>
Status sum_shards(Transport& t, int shards, const ShardValueFn<T>& value, std::span<T> out, const Options& opt = {},
                  const char* flow = nullptr);

// The same tree on one process over values already computed (tests, and the reference for any
// group size): values[s] is shard s's value.
template <class T>
std::vector<T> sum_shards_local(const std::vector<std::vector<T>>& values);

}  // namespace mobula
