#include "core/transport/shard_sum.h"

#include "core/metrics/registry.h"

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mobula {

ShardRange shards_of(int member, int members, int shards) {
  auto first = [&](int m) { return static_cast<int>(static_cast<int64_t>(shards) * m / std::max(1, members)); };
  return {first(member), first(member + 1)};
}

int owner_of_shard(int shard, int members, int shards) {
  // The last member whose block starts at or before `shard` (earlier ones may be empty).
  int m = std::min(members - 1, static_cast<int>(static_cast<int64_t>(shard) * members / shards));
  while (m > 0 && shards_of(m, members, shards).first > shard) --m;
  while (m + 1 < members && shards_of(m + 1, members, shards).first <= shard) ++m;
  return m;
}

namespace {

int tree_levels(int shards) {
  int l = 0;
  while ((int64_t{1} << l) < shards) ++l;
  return l;
}

// Node (level, index) of the tree over `shards` leaves.
struct Tree {
  int shards, members;
  int64_t first(int level, int64_t i) const { return i << level; }
  int64_t end(int level, int64_t i) const { return std::min<int64_t>(shards, (i + 1) << level); }
  bool empty(int level, int64_t i) const { return first(level, i) >= shards; }
  int owner(int64_t shard) const { return owner_of_shard(static_cast<int>(shard), members, shards); }
  // Whether one member owns every shard of the node (it is then folded in that member's own pass).
  bool single_owner(int level, int64_t i) const { return owner(first(level, i)) == owner(end(level, i) - 1); }
};

template <class T>
void add_into(std::vector<T>& left, const std::vector<T>& right) {
  T* a = left.data();
  const T* b = right.data();
  for (size_t j = 0, n = left.size(); j < n; ++j) a[j] = a[j] + b[j];
}

using Key = std::pair<int, int64_t>;  // (level, index)

// This member's shards, folded as they are computed: returns the maximal nodes it owns alone.
template <class T>
Result<std::map<Key, std::vector<T>>> fold_own(const Tree& tree, ShardRange mine, size_t count,
                                               const ShardValueFn<T>& value, int levels) {
  struct Node {
    int level;
    int64_t index;
    std::vector<T> v;
  };
  std::vector<Node> stack;
  for (int s = mine.first; s < mine.end; ++s) {
    Node leaf{0, s, std::vector<T>(count)};
    MOBULA_RETURN_IF_ERROR(value(s, std::span<T>(leaf.v)));
    stack.push_back(std::move(leaf));
    while (stack.back().level < levels) {
      Node& top = stack.back();
      const int l = top.level;
      const int64_t i = top.index;
      if (!tree.single_owner(l + 1, i >> 1)) break;  // the parent spans another member's shards
      if (i & 1) {                                   // right child: its left sibling is below it
        Node& left = stack[stack.size() - 2];
        add_into(left.v, top.v);
        stack.pop_back();
        left.level = l + 1;
        left.index = i >> 1;
      } else if (tree.empty(l, i + 1)) {  // no right sibling: the parent's value is this one's
        top.level = l + 1;
        top.index = i >> 1;
      } else {
        break;  // the right sibling's shards come next
      }
    }
  }
  std::map<Key, std::vector<T>> held;
  for (auto& n : stack) held.emplace(Key{n.level, n.index}, std::move(n.v));
  return held;
}

}  // namespace

template <class T>
Status sum_shards(Transport& t, int shards, const ShardValueFn<T>& value, std::span<T> out, const Options& opt,
                  const char* flow) {
  if (shards < 1) return Status::invalid_argument("sum_shards: shards must be >= 1, got " + std::to_string(shards));
  const int me = t.rank(), members = t.size();
  const Tree tree{shards, members};
  const int levels = tree_levels(shards);
  if (opt.tag + levels > kMaxUserTag) return Status::invalid_argument("sum_shards: tag range exceeds kMaxUserTag");
  auto folded = fold_own<T>(tree, shards_of(me, members, shards), out.size(), value, levels);
  if (!folded) return folded.status();
  std::map<Key, std::vector<T>>& held = *folded;
  std::optional<metrics::FlowTimer> timer;
  if (flow) timer.emplace(flow, static_cast<double>(out.size() * sizeof(T)));
  // Nodes spanning several members, level by level: the right child's owner sends, the left
  // child's owner adds. Sends are posted before receives, so no order of members can deadlock.
  for (int l = 0; l < levels; ++l) {
    Options o = opt;
    o.tag = opt.tag + l;
    std::vector<RequestPtr> sends;
    std::vector<Key> sent;
    const int64_t parents = (int64_t{shards} + (int64_t{1} << (l + 1)) - 1) >> (l + 1);
    for (int64_t p = 0; p < parents; ++p) {
      if (tree.single_owner(l + 1, p) || tree.empty(l, 2 * p + 1)) continue;
      const int o0 = tree.owner(tree.first(l, 2 * p)), o1 = tree.owner(tree.first(l, 2 * p + 1));
      if (o1 != me || o0 == me) continue;
      auto it = held.find({l, 2 * p + 1});
      if (it == held.end()) return Status::external("sum_shards: internal: node value missing");
      auto r = t.isend(host_buffer(std::span<const T>(it->second)), o0, o);
      if (!r) return r.status();
      sends.push_back(std::move(r).value());
      sent.push_back(it->first);
    }
    Status st = Status::ok();
    for (int64_t p = 0; p < parents && st.is_ok(); ++p) {
      if (tree.single_owner(l + 1, p) || tree.owner(tree.first(l, 2 * p)) != me) continue;
      auto left = held.find({l, 2 * p});
      if (left == held.end()) return Status::external("sum_shards: internal: node value missing");
      std::vector<T> v = std::move(left->second);
      held.erase(left);
      if (!tree.empty(l, 2 * p + 1)) {
        const int o1 = tree.owner(tree.first(l, 2 * p + 1));
        if (o1 == me) {
          auto right = held.find({l, 2 * p + 1});
          if (right == held.end()) return Status::external("sum_shards: internal: node value missing");
          add_into(v, right->second);
          held.erase(right);
        } else {
          std::vector<T> right(out.size());
          st = t.recv(host_buffer(std::span<T>(right)), o1, o);
          if (st.is_ok()) add_into(v, right);
        }
      }
      held[{l + 1, p}] = std::move(v);
    }
    const Status sends_done = wait_all(sends);
    MOBULA_RETURN_IF_ERROR(st);
    MOBULA_RETURN_IF_ERROR(sends_done);
    for (const Key& k : sent) held.erase(k);
  }
  const int root = tree.owner(0);
  if (me == root) {
    auto it = held.find({levels, 0});
    if (it == held.end()) return Status::external("sum_shards: internal: root value missing");
    std::copy(it->second.begin(), it->second.end(), out.begin());
  }
  if (members == 1) return Status::ok();
  return t.broadcast(host_buffer(out), root, opt);
}

template <class T>
std::vector<T> sum_shards_local(const std::vector<std::vector<T>>& values) {
  // Straight from the definition, recursively: node (l, i) = left + right, or left alone.
  const int64_t S = static_cast<int64_t>(values.size());
  std::function<std::vector<T>(int, int64_t)> node = [&](int l, int64_t i) -> std::vector<T> {
    if (l == 0) return values[static_cast<size_t>(i)];
    std::vector<T> left = node(l - 1, 2 * i);
    if (((2 * i + 1) << (l - 1)) >= S) return left;
    add_into(left, node(l - 1, 2 * i + 1));
    return left;
  };
  return values.empty() ? std::vector<T>{} : node(tree_levels(static_cast<int>(S)), 0);
}

template Status sum_shards<float>(Transport&, int, const ShardValueFn<float>&, std::span<float>, const Options&,
                                  const char*);
template Status sum_shards<double>(Transport&, int, const ShardValueFn<double>&, std::span<double>, const Options&,
                                   const char*);
template std::vector<float> sum_shards_local<float>(const std::vector<std::vector<float>>&);
template std::vector<double> sum_shards_local<double>(const std::vector<std::vector<double>>&);

}  // namespace mobula
