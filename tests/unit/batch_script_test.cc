// Rendering job specs into sbatch scripts (slurm/batch_script.h).
#include "slurm/batch_script.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>

namespace mobula::slurm {
namespace {

RenderOptions opts() {
  RenderOptions o;
  o.mobula_exe = "/opt/mobula/bin/mobula";
  o.spec_copy = "/scratch/runs/t/spec.toml";
  o.workdir = "/scratch/runs/t";
  o.origin = "test.toml";
  o.sets = {"job.steps=7", "rl.task=reverse words"};
  return o;
}

Result<BatchScript> render(const std::string& toml, const std::vector<std::string>& sets = {}) {
  auto spec = load_spec_from_string(toml, "test.toml", sets);
  if (!spec) return spec.status();
  return render_batch_script(*spec, opts());
}

TEST(BatchScript, OneComponentWhenRolesShareResources) {
  auto bs = render(R"(
[job]
name = "grpo"
[roles.trainer]
ranks = 2
[roles.rollout]
ranks = 1
[slurm]
partition = "gpu"
time = "01:30:00"
tasks_per_node = 2
extra = ["--mail-type=END"]
env = ["OMPI_MCA_btl=self,tcp", "NOTE=two words"]
)");
  ASSERT_TRUE(bs.is_ok()) << bs.status().message();
  const std::string& t = bs->text;
  ASSERT_EQ(bs->components.size(), 1u);
  EXPECT_EQ(bs->components[0].ranks, 3);
  EXPECT_EQ(t.rfind("#!/bin/bash\n", 0), 0u);
  for (const char* line :
       {"#SBATCH --job-name=grpo\n", "#SBATCH --chdir=/scratch/runs/t\n",
        "#SBATCH --output=/scratch/runs/t/slurm-%j.out\n", "#SBATCH --requeue\n", "#SBATCH --open-mode=append\n",
        "#SBATCH --signal=B:USR1@120\n", "#SBATCH --mail-type=END\n", "#SBATCH --partition=gpu\n",
        "#SBATCH --time=01:30:00\n", "#SBATCH --ntasks=3\n", "#SBATCH --ntasks-per-node=2\n",
        "export OMPI_MCA_btl=self,tcp\n", "export NOTE='two words'\n", "# ranks: trainer x2, rollout x1\n"})
    EXPECT_NE(t.find(line), std::string::npos) << line << " missing in:\n" << t;
  EXPECT_EQ(t.find("hetjob"), std::string::npos) << t;
  EXPECT_EQ(t.find("--nodes"), std::string::npos) << "nodes = 0 must not be rendered\n" << t;
  // The step: guarded srun, the user's overrides quoted, the absolute work dir last.
  EXPECT_NE(t.find("exec /opt/mobula/bin/mobula step --grace 15 --max-restarts 2 --restart-delay 5 --max-requeues 3 "
                   "--events /scratch/runs/t --require-records -- srun --mpi=pmix "
                   "--kill-on-bad-exit=1 /opt/mobula/bin/mobula worker "
                   "/scratch/runs/t/spec.toml --set job.steps=7 --set 'rl.task=reverse words' --set "
                   "job.workdir=/scratch/runs/t\n"),
            std::string::npos)
      << t;
}

TEST(BatchScript, DifferentRoleResourcesMakeAHeterogeneousJob) {
  auto bs = render(R"(
[job]
name = "het"
[roles.trainer]
ranks = 2
[roles.rollout]
ranks = 2
[roles.embed]
ranks = 3
[slurm]
partition = "gpu"
time = "30"
gpus_per_node = 4
[slurm.embed]
partition = "cpu"
nodes = 1
[slurm.rollout]
gpus_per_node = 4
)");
  ASSERT_TRUE(bs.is_ok()) << bs.status().message();
  const std::string& t = bs->text;
  // trainer and rollout resolve to the same resources (rollout's own gpus_per_node equals the
  // global one): one component; embed differs in partition and nodes: a second one.
  ASSERT_EQ(bs->components.size(), 2u) << t;
  EXPECT_EQ(bs->components[0].roles, (std::vector<std::string>{"trainer", "rollout"}));
  EXPECT_EQ(bs->components[0].ranks, 4);
  EXPECT_EQ(bs->components[1].roles, (std::vector<std::string>{"embed"}));
  const auto het = t.find("#SBATCH hetjob\n");
  ASSERT_NE(het, std::string::npos) << t;
  const std::string c0 = t.substr(0, het), c1 = t.substr(het);
  EXPECT_NE(c0.find("#SBATCH --partition=gpu\n#SBATCH --time=30\n#SBATCH --ntasks=4\n#SBATCH --gpus-per-node=4\n"),
            std::string::npos)
      << t;
  EXPECT_NE(c1.find("#SBATCH --partition=cpu\n#SBATCH --time=30\n#SBATCH --nodes=1\n#SBATCH --ntasks=3\n"
                    "#SBATCH --gpus-per-node=4\n"),
            std::string::npos)
      << t;
  EXPECT_NE(t.find("srun --het-group=0,1 --mpi=pmix --kill-on-bad-exit=1"), std::string::npos) << t;
  EXPECT_NE(t.find("--set roles.trainer.het_group=0 --set roles.rollout.het_group=0 --set roles.embed.het_group=1\n"),
            std::string::npos)
      << t;
  EXPECT_NE(t.find("# component 1: embed x3\n"), std::string::npos) << t;
}

TEST(BatchScript, ImpossibleResourcesAreSpecErrors) {
  const std::string base = "[job]\nname = \"x\"\n[roles.trainer]\nranks = 2\n[slurm.trainer]\n";
  auto bs = render(base + "nodes = 3\n");
  ASSERT_FALSE(bs.is_ok());
  EXPECT_EQ(bs.status().code(), Status::Code::kInvalidSpec);
  EXPECT_NE(bs.status().message().find("test.toml:6: slurm.trainer.nodes: 3 nodes for 2 ranks"), std::string::npos)
      << bs.status().message();
  bs = render(base + "nodes = 1\ntasks_per_node = 1\n");
  ASSERT_FALSE(bs.is_ok());
  EXPECT_NE(bs.status().message().find("1 nodes x 1 tasks cannot hold 2 ranks"), std::string::npos)
      << bs.status().message();
}

TEST(BatchScript, ShellHostileValuesAreRefusedInTheSpec) {
  const std::string base = "[job]\nname = \"x\"\n[roles.trainer]\nranks = 1\n[slurm]\n";
  for (const char* bad : {"partition = \"gpu; rm -rf /\"", "time = \"1h\"", "env = [\"1X=2\"]", "env = [\"NOEQUALS\"]",
                          "mpi = \"pmix --x\"", "extra = [\"--a\\n--b\"]"}) {
    auto spec = load_spec_from_string(base + bad + "\n", "test.toml");
    ASSERT_FALSE(spec.is_ok()) << bad;
    EXPECT_EQ(spec.status().message().rfind("test.toml:", 0), 0u) << spec.status().message();
  }
  auto ok = load_spec_from_string(base + "signal_grace_s = 0\nrequeue = false\n", "test.toml");
  ASSERT_TRUE(ok.is_ok()) << ok.status().message();
  auto bs = render_batch_script(*ok, opts());
  ASSERT_TRUE(bs.is_ok());
  EXPECT_EQ(bs->text.find("--signal"), std::string::npos);
  EXPECT_NE(bs->text.find("#SBATCH --no-requeue\n"), std::string::npos);
}

// `mobula submit --dry-run` output for the example specs against reviewed scripts in
// tests/unit/golden/ (MOBULA_UPDATE_GOLDEN=1 rewrites them; review the diff before committing).
class Golden : public ::testing::TestWithParam<std::pair<const char*, std::vector<std::string>>> {};

TEST_P(Golden, DryRunMatchesTheReviewedScript) {
  const auto& [example, sets] = GetParam();
  const std::string src = MOBULA_TEST_SOURCE_DIR;
  auto spec = load_spec(src + "/examples/" + example + ".toml", sets);
  ASSERT_TRUE(spec.is_ok()) << spec.status().message();
  RenderOptions o;
  o.mobula_exe = "/opt/mobula/bin/mobula";
  o.workdir = "/scratch/runs/" + std::string(example);
  o.spec_copy = o.workdir + "/spec.toml";
  o.origin = "examples/" + std::string(example) + ".toml";
  o.sets = sets;
  auto bs = render_batch_script(*spec, o);
  ASSERT_TRUE(bs.is_ok()) << bs.status().message();
  // The version and the spec hash (which moves with every new spec key) are not what is reviewed.
  std::string text = std::regex_replace(bs->text, std::regex("spec hash [0-9a-f]+"), "spec hash HASH");
  text = std::regex_replace(text, std::regex("\\(mobula [^)]*\\)"), "(mobula VERSION)");
  const std::string path = src + "/tests/unit/golden/" + example + ".sbatch";
  if (const char* u = std::getenv("MOBULA_UPDATE_GOLDEN"); u && std::string(u) == "1") {
    std::ofstream(path) << text;
    GTEST_SKIP() << "rewrote " << path;
  }
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << path << " missing; MOBULA_UPDATE_GOLDEN=1 writes it";
  std::stringstream want;
  want << in.rdbuf();
  EXPECT_EQ(text, want.str()) << "rendered script differs from " << path;
}

INSTANTIATE_TEST_SUITE_P(
    Examples, Golden,
    ::testing::Values(std::make_pair("grpo-addition", std::vector<std::string>{"slurm.partition=gpu", "slurm.time=30"}),
                      std::make_pair("hetjob", std::vector<std::string>{}),
                      std::make_pair("three-roles", std::vector<std::string>{"checkpoint.every=10"})),
    [](const auto& param_info) {
      std::string n = param_info.param.first;
      for (auto& c : n)
        if (c == '-') c = '_';
      return n;
    });

}  // namespace
}  // namespace mobula::slurm
