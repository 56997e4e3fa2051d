using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Dtrain.E2E.Support;
using Xunit.Abstractions;

namespace Dtrain.E2E;

/// <summary>
/// The image as a cluster (Testcontainers): a coordinator and 3 one-CPU worker containers on a private network,
/// driven from the host by the real CLI. Data-parallel training on the 3 containers gives the model that
/// `dtrain train` gives in one process on the host (same spec and seed) — up to float summation order.
/// </summary>
[Collection(DockerCollection.Name)]
public sealed class ContainerClusterTests(ImageFixture image, ITestOutputHelper output)
{
    /// <summary>The project's equivalence guarantee, in metric units (nats, accuracy fraction).</summary>
    const double Tolerance = 0.01;

    [DockerFact]
    public async Task Jobs_on_three_worker_containers_match_local_training()
    {
        image.EnsureBuilt(output);
        var clock = Stopwatch.StartNew();
        using var tmp = new TempDir();
        var cli = new HostCli(output, tmp.Path);
        var lm = E2EJobs.MobyDickLm(tmp);
        var clf = E2EJobs.SpamClassifier(tmp);

        // The references: the same specs trained in one process on the host.
        var lmTrain = await cli.CheckAsync("train", lm, "--plain");
        var clfTrain = await cli.CheckAsync("train", clf, "--plain");
        output.WriteLine($"local training done after {clock.Elapsed.TotalSeconds:F1} s");

        await using var cluster = await ContainerCluster.StartAsync(output, "cluster", 3);
        await cluster.RunAsync(async () =>
        {
            cli.TlsDir = cluster.ClientTlsDir;
            using var client = cluster.NewClient();
            var workers = client.Workers();
            // --threads auto under a 1-CPU quota: one torch thread each.
            Assert.All(workers, w => Assert.True(w.Threads == 1, $"{w.WorkerId} runs {w.Threads} torch threads under a 1-CPU limit"));
            // Every worker advertises its own container IP (what its peers dial), port 7000, over TLS.
            foreach (var w in workers) Assert.Equal($"https://{cluster.WorkerAt(w.Address).IpAddress}:7000", w.Address);
            var listed = await cli.CheckAsync("workers", "--coordinator", cluster.Address);
            foreach (var w in workers) Assert.Contains(w.WorkerId, listed.Stdout);
            Assert.Contains("idle", listed.Stdout);

            var (lmCluster, lmWatch) = await TrainOnClusterAsync(cli, client, cluster.Address, lm, "lm.dtck", "moby-valid.txt");
            AssertSameValidation(lmTrain, lmWatch);
            var lmLocal = EvalResult.Parse(await cli.CheckAsync("eval", "runs/e2e-lm", "--data", "moby-valid.txt"));
            output.WriteLine($"language model: validation loss {lmCluster.Loss:F4} (3 containers) vs {lmLocal.Loss:F4} (local) over {lmLocal.Count} tokens");
            Assert.Equal(lmLocal.Count, lmCluster.Count);
            Assert.True(Math.Abs(lmCluster.Loss - lmLocal.Loss) <= Tolerance, $"LM validation loss {lmCluster.Loss} on 3 containers vs {lmLocal.Loss} locally");

            var (clfCluster, clfWatch) = await TrainOnClusterAsync(cli, client, cluster.Address, clf, "clf.dtck", "spam-valid.jsonl");
            AssertSameValidation(clfTrain, clfWatch);
            var clfLocal = EvalResult.Parse(await cli.CheckAsync("eval", "runs/e2e-clf", "--data", "spam-valid.jsonl"));
            output.WriteLine($"classifier: loss {clfCluster.Loss:F4} / accuracy {clfCluster.Accuracy:P2} (3 containers) vs {clfLocal.Loss:F4} / {clfLocal.Accuracy:P2} (local) over {clfLocal.Count} examples");
            Assert.Equal(clfLocal.Count, clfCluster.Count);
            Assert.True(Math.Abs(clfCluster.Loss - clfLocal.Loss) <= Tolerance, $"classifier validation loss {clfCluster.Loss} on 3 containers vs {clfLocal.Loss} locally");
            Assert.True(Math.Abs(clfCluster.Accuracy!.Value - clfLocal.Accuracy!.Value) <= Tolerance, $"classifier accuracy {clfCluster.Accuracy} on 3 containers vs {clfLocal.Accuracy} locally");
        });
        output.WriteLine($"test body done after {clock.Elapsed.TotalSeconds:F1} s");
    }

    /// <summary>
    /// The final "validation: loss L" of `train` (local) and of `submit --watch` (the coordinator's evaluation on rank 0)
    /// — both evaluate the spec's validation file with the training batch size.
    /// </summary>
    void AssertSameValidation(ProcessResult local, ProcessResult watch)
    {
        static double Final(ProcessResult r)
        {
            var all = Regex.Matches(r.Stdout, @"^validation: loss (?<v>[0-9.]+)", RegexOptions.Multiline);
            Assert.True(all.Count > 0, $"no final `validation: loss` line\n{r}");
            return double.Parse(all[^1].Groups["v"].Value, CultureInfo.InvariantCulture);
        }
        var (l, c) = (Final(local), Final(watch));
        output.WriteLine($"validation loss reported by training: {c:F4} (3 containers) vs {l:F4} (local)");
        Assert.True(Math.Abs(l - c) <= Tolerance, $"validation loss at the end of training: {c} on 3 containers vs {l} locally");
    }

    /// <summary>submit --workers 3 --watch (exit 0, on 3 workers), download the model, evaluate it on the host.</summary>
    async Task<(EvalResult Eval, ProcessResult Watch)> TrainOnClusterAsync(HostCli cli, CoordinatorClient client, string coordinator, string spec, string model, string validation)
    {
        var (id, watch) = await cli.SubmitAsync(coordinator, spec, workers: 3, watch: true);
        Assert.True(watch.ExitCode == 0, $"the job did not succeed\n{watch}");
        Assert.Contains($"{id}: succeeded", watch.Stdout);
        Assert.Equal(3, (await cli.StatusWorkersAsync(coordinator, id)).Count);
        Assert.Equal(client.Job(id).TotalSteps, client.Job(id).Step);
        await cli.CheckAsync("download", id, "-o", model, "--coordinator", coordinator);
        Assert.True(new FileInfo(Path.Combine(cli.WorkDir, model)).Length > 0);
        return (EvalResult.Parse(await cli.CheckAsync("eval", model, "--data", validation)), watch);
    }
}
