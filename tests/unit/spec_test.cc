#include "core/runtime/spec.h"

#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>

namespace mobula {
namespace {

const char* kGood = R"(# comment
[job]
name = "t"
steps = 4
seed = 9

[roles.trainer]
ranks = 2

[roles.rollout]
ranks = 3
)";

std::string err(std::string_view text, std::vector<std::string> sets = {}) {
  auto r = load_spec_from_string(text, "job.toml", sets);
  EXPECT_FALSE(r.is_ok()) << "expected an error for:\n" << text;
  if (r.is_ok()) return "";
  EXPECT_EQ(r.status().exit_code(), 2);
  EXPECT_EQ(r.status().message().find('\n'), std::string::npos) << "message must be one line";
  return r.status().message();
}

TEST(Spec, ParsesTypedValuesAndDefaults) {
  auto r = load_spec_from_string(kGood, "job.toml");
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->name, "t");
  EXPECT_EQ(r->steps, 4);
  EXPECT_EQ(r->seed, 9);
  EXPECT_EQ(r->workdir, "runs/t");
  EXPECT_EQ(r->workload, "layout-check");
  ASSERT_EQ(r->roles.size(), 2u);
  EXPECT_EQ(r->roles[0].name, "trainer");
  EXPECT_EQ(r->roles[1].name, "rollout");
  EXPECT_EQ(r->total_ranks(), 5);
  EXPECT_EQ(r->transport.weights, "auto");
  EXPECT_EQ(r->where("roles.rollout.ranks"), "job.toml:11");
  EXPECT_EQ(r->where("job.steps"), "job.toml:4");
}

TEST(Spec, UnknownKeyHasLineAndSuggestion) {
  const std::string m = err("[job]\nname = \"t\"\n[roles.trainer]\nrank = 2\n");
  EXPECT_EQ(m, "job.toml:4: roles.trainer.rank: unknown key; did you mean 'roles.trainer.ranks'?");
}

TEST(Spec, UnknownTableHasSuggestion) {
  const std::string m = err("[job]\nname = \"t\"\n[roles.trainr]\nranks = 2\n");
  EXPECT_TRUE(m.starts_with("job.toml:3: roles.trainr: unknown table")) << m;
  EXPECT_NE(m.find("did you mean 'roles.trainer'"), std::string::npos) << m;
}

TEST(Spec, UnknownMetricsKeyHasSuggestion) {
  const std::string m = err("[job]\nname = \"t\"\n[roles.trainer]\nranks = 1\n[metrics]\nprot = 4\n");
  EXPECT_TRUE(m.starts_with("job.toml:6: metrics.prot: unknown key")) << m;
  EXPECT_NE(m.find("did you mean 'metrics.port'"), std::string::npos) << m;
}

TEST(Spec, MetricsPortRange) {
  const std::string m = err("[job]\nname = \"t\"\n[roles.trainer]\nranks = 1\n[metrics]\nport = 70000\n");
  EXPECT_TRUE(m.starts_with("job.toml:6: metrics.port:")) << m;
}

TEST(Spec, CheckpointKeys) {
  auto s = load_spec_from_string(
      "[job]\nname = \"t\"\nworkdir = \"/w\"\n[roles.trainer]\nranks = 1\n[checkpoint]\nevery = 4\n", "job.toml");
  ASSERT_TRUE(s.is_ok()) << s.status().message();
  EXPECT_EQ(s->checkpoint.every, 4);
  EXPECT_EQ(s->checkpoint.keep, 3);
  EXPECT_EQ(s->checkpoint.dir, "/w/checkpoints");
  EXPECT_TRUE(s->checkpoint.async);
  const std::string m = err("[job]\nname = \"t\"\n[roles.trainer]\nranks = 1\n[checkpoint]\nevery = -1\n");
  EXPECT_NE(m.find("job.toml:6: checkpoint.every"), std::string::npos) << m;
}

TEST(Spec, SlurmDurations) {
  EXPECT_EQ(*parse_slurm_duration(""), 0);
  EXPECT_EQ(*parse_slurm_duration("30"), 1800);
  EXPECT_EQ(*parse_slurm_duration("0:05"), 5);
  EXPECT_EQ(*parse_slurm_duration("01:30:00"), 5400);
  EXPECT_EQ(*parse_slurm_duration("1-02"), 93600);
  EXPECT_EQ(*parse_slurm_duration("1-00:00:10"), 86410);
  for (const char* bad : {"x", "1:2:3:4", "-5", "1--2", ":", "1:", "2h"})
    EXPECT_FALSE(parse_slurm_duration(bad).is_ok()) << bad;
  auto s = load_spec_from_string(
      "[job]\nname = \"t\"\n[roles.trainer]\nranks = 1\n[slurm]\nkeep_on_failure = \"0:05\"\n", "job.toml");
  ASSERT_TRUE(s.is_ok()) << s.status().message();
  EXPECT_EQ(s->slurm.keep_on_failure_s, 5);
  const std::string m = err("[job]\nname = \"t\"\n[roles.trainer]\nranks = 1\n[slurm]\nkeep_on_failure = \"5m\"\n");
  EXPECT_TRUE(m.starts_with("job.toml:6: slurm.keep_on_failure: \"5m\" is not a Slurm time")) << m;
}

TEST(Spec, WrongTypeNamesExpectedAndActual) {
  const std::string m = err("[job]\nname = \"t\"\nsteps = \"ten\"\n[roles.trainer]\nranks = 1\n");
  EXPECT_EQ(m, "job.toml:3: job.steps: expected an integer, got string \"ten\"");
}

TEST(Spec, FloatIsNotAnInteger) {
  EXPECT_NE(err("[job]\nname = \"t\"\n[roles.trainer]\nranks = 1.5\n")
                .find("job.toml:4: roles.trainer.ranks: expected an integer"),
            std::string::npos);
}

TEST(Spec, RangeAndChoices) {
  EXPECT_NE(err("[job]\nname = \"t\"\nsteps = -1\n[roles.trainer]\nranks = 1\n").find("out of range"),
            std::string::npos);
  const std::string m = err("[job]\nname = \"t\"\n[roles.trainer]\nranks = 1\n[transport]\nweights = \"tcp\"\n");
  EXPECT_EQ(m, "job.toml:6: transport.weights: \"tcp\" is not one of \"auto\", \"mpi\", \"ucx\", \"nccl\"");
}

TEST(Spec, ZeroTrainersIsAnError) {
  const std::string m = err("[job]\nname = \"t\"\n[roles.trainer]\nranks = 0\n[roles.rollout]\nranks = 2\n");
  EXPECT_TRUE(m.starts_with("job.toml:4: roles.trainer.ranks: a job needs at least 1 trainer rank")) << m;
}

TEST(Spec, MissingRequiredKey) {
  const std::string m = err("[job]\nsteps = 1\n[roles.trainer]\nranks = 1\n");
  EXPECT_TRUE(m.starts_with("job.toml:1: job.name: required key missing")) << m;
}

TEST(Spec, ModelAndRlSections) {
  auto r = load_spec_from_string(std::string(kGood) + "[model]\nlayers = 3\n[rl]\nlr = 5e-4\ntask = \"reverse\"\n",
                                 "job.toml", {"rl.clip=0.1", "rl.group_size=4"});
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->model.layers, 3);
  EXPECT_EQ(r->model.d_model, 64);
  EXPECT_DOUBLE_EQ(r->rl.lr, 5e-4);
  EXPECT_DOUBLE_EQ(r->rl.clip, 0.1);
  EXPECT_EQ(r->rl.group_size, 4);
  EXPECT_EQ(r->rl.task, "reverse");
  EXPECT_NE(err(kGood, {"model.d_model=30"}).find("model.d_model: 30 is not a multiple of model.heads (4)"),
            std::string::npos);
  EXPECT_NE(err(kGood, {"rl.lr=-1.0"}).find("rl.lr: must be a finite number >= 0"), std::string::npos);
  EXPECT_NE(err("[job]\nname = \"t\"\nworkload = \"grpo\"\n[roles.trainer]\nranks = 1\n")
                .find("roles.rollout.ranks: workload \"grpo\" needs at least 1 rollout rank"),
            std::string::npos);
}

TEST(Spec, SyntaxErrorHasLine) {
  const std::string m = err("[job]\nname = \"t\"\nsteps = = 3\n");
  EXPECT_TRUE(m.starts_with("job.toml:3: (syntax):")) << m;
}

TEST(Spec, OverridesApplyInOrderAndTrackOrigin) {
  auto r = load_spec_from_string(
      kGood, "job.toml",
      {"job.steps=10", "job.name=other", "roles.embed.ranks=1", "job.steps=11", "transport.weights=\"mpi\""});
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->steps, 11);
  EXPECT_EQ(r->name, "other");
  EXPECT_EQ(r->transport.weights, "mpi");
  ASSERT_NE(r->role("embed"), nullptr);
  EXPECT_EQ(r->role("embed")->ranks, 1);
  EXPECT_EQ(r->where("job.steps"), "--set:4");
  for (const auto& k : r->keys()) {
    if (k.def->path == "job.seed") {
      EXPECT_EQ(k.origin, "job.toml:5");
    }
  }
}

TEST(Spec, BadOverrides) {
  EXPECT_EQ(err(kGood, {"job.steps=ten"}), "--set:1: job.steps: cannot parse 'ten' as an integer (TOML syntax)");
  EXPECT_EQ(err(kGood, {"job.step=3"}), "--set:1: job.step: unknown key; did you mean 'job.steps'?");
  EXPECT_EQ(err(kGood, {"job.steps"}), "--set:1: job.steps: expected KEY=VALUE, e.g. --set job.steps=10");
  EXPECT_EQ(err(kGood, {"job.seed=1", "job.steps=true"}), "--set:2: job.steps: expected an integer, got boolean true");
}

TEST(Spec, HashIsStableAndSensitive) {
  auto a = load_spec_from_string(kGood, "a.toml");
  auto b = load_spec_from_string(std::string(kGood) + "\n# trailing comment\n", "b.toml");
  auto c = load_spec_from_string(kGood, "a.toml", {"job.seed=10"});
  ASSERT_TRUE(a.is_ok() && b.is_ok() && c.is_ok());
  EXPECT_EQ(a->hash(), b->hash());
  EXPECT_NE(a->hash(), c->hash());
  EXPECT_EQ(a->hash().size(), 16u);
}

TEST(Spec, EditDistance) {
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(edit_distance("ranks", "rank"), 1u);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
}

TEST(Spec, LoadSpecReportsMissingFile) {
  auto r = load_spec("/nonexistent/dir/job.toml");
  ASSERT_FALSE(r.is_ok());
  EXPECT_TRUE(r.status().message().starts_with("/nonexistent/dir/job.toml:0: (file): cannot open"))
      << r.status().message();
}

// docs/spec.md must document every key of the schema (as `key` in a table row).
TEST(Spec, EveryKeyIsDocumented) {
  std::ifstream in(std::string(MOBULA_TEST_SOURCE_DIR) + "/docs/spec.md");
  ASSERT_TRUE(in.good()) << "docs/spec.md missing";
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  for (const auto& k : spec_schema())
    EXPECT_NE(doc.find("`" + k.path + "`"), std::string::npos) << k.path << " is not documented in docs/spec.md";
}

// Every example spec parses and lays out.
TEST(Spec, ExamplesAreValid) {
  for (const char* ex : {"minimal", "three-roles", "hetjob"}) {
    auto r = load_spec(std::string(MOBULA_TEST_SOURCE_DIR) + "/examples/" + ex + ".toml");
    EXPECT_TRUE(r.is_ok()) << ex << ": " << r.status().message();
  }
}

}  // namespace
}  // namespace mobula
