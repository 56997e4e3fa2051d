using System.Globalization;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Dtrain.E2E.Support;
using Dtrain.Specs;
using Xunit.Abstractions;

namespace Dtrain.E2E;

/// <summary>
/// A dataset in object storage, end to end: deploy/docker-compose.yml with the `s3` profile (its S3 test server,
/// scripts/s3-image.sh) and 3 workers; `dtrain prepare -o s3://...` on the host through the server's published port;
/// a job naming the dataset (data.dataset: s3://...) trains on all 3 workers (the coordinator reads the manifest with
/// its own S3 settings at submit, each worker fetches its shards from the s3 service into its cache) and its loss falls.
/// </summary>
[Collection(DockerCollection.Name)]
public sealed class S3DatasetTests(ImageFixture image, ITestOutputHelper output)
{
    const int Steps = 16;

    [DockerFact]
    public async Task Three_workers_train_from_a_dataset_prepared_into_the_compose_s3_service()
    {
        image.EnsureBuilt(output);
        var s3Image = Environment.GetEnvironmentVariable("DTRAIN_E2E_S3_IMAGE") is { Length: > 0 } tag ? tag : "dtrain-s3:e2e";
        var built = await ProcessRunner.RunAsync("bash", [RepoFiles.PathOf("scripts", "s3-image.sh")], TimeSpan.FromMinutes(10), RepoFiles.Root,
            new Dictionary<string, string> { ["DTRAIN_S3_IMAGE"] = s3Image, ["DTRAIN_BASE_IMAGE"] = Environment.GetEnvironmentVariable("DTRAIN_BASE_IMAGE") ?? "" });
        output.WriteLine($"scripts/s3-image.sh: {built}");
        Assert.True(built.ExitCode == 0, built.ToString());

        using var tmp = new TempDir();
        var compose = new ComposeProject(output);
        await using var _ = compose;
        var s3Port = ComposeProject.FreeLoopbackPort();
        var secret = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));
        foreach (var (k, v) in new Dictionary<string, string>
        {
            ["DTRAIN_S3_IMAGE"] = s3Image, ["DTRAIN_S3_PORT"] = s3Port.ToString(CultureInfo.InvariantCulture),
            ["DTRAIN_S3_ACCESS_KEY"] = "dtrain", ["DTRAIN_S3_SECRET_KEY"] = secret,
            // What the coordinator and the workers reach the s3 service with, inside the compose network.
            ["DTRAIN_S3_ENDPOINT"] = "http://s3:9000", ["AWS_ACCESS_KEY_ID"] = "dtrain", ["AWS_SECRET_ACCESS_KEY"] = secret, ["AWS_REGION"] = "us-east-1",
        })
            compose.Environment[k] = v;
        var cli = new HostCli(output, tmp.Path);
        try
        {
            await compose.CheckAsync(TimeSpan.FromMinutes(3), "--profile", "s3", "up", "-d", "--wait", "s3");
            await compose.CheckAsync(TimeSpan.FromMinutes(4), "--profile", "s3", "up", "-d", "--scale", "worker=3");

            // Prepared on the host, uploaded through the published port.
            E2EJobs.MobyDickLm(tmp);
            const string Uri = "s3://datasets/e2e/moby";
            foreach (var (k, v) in new Dictionary<string, string>
            {
                ["DTRAIN_S3_ENDPOINT"] = $"http://127.0.0.1:{s3Port}", ["AWS_ACCESS_KEY_ID"] = "dtrain", ["AWS_SECRET_ACCESS_KEY"] = secret,
                ["AWS_REGION"] = "us-east-1", ["DTRAIN_S3_CACHE_DIR"] = Path.Combine(tmp.Path, "s3-cache"),
            })
                cli.Environment[k] = v;
            var prepared = await cli.CheckAsync("prepare", "moby-train.txt", "--validation", "moby-valid.txt", "-o", Uri);
            Assert.Equal(Uri, prepared.Stdout.Trim());

            var spec = tmp.Write("s3.json", JobSpecSerializer.Serialize(new JobSpec
            {
                Name = "e2e-s3",
                Task = TaskKinds.LanguageModel,
                Data = new DataSpec { Dataset = Uri },
                Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 1, EmbeddingDim = 16, HiddenSize = 48 },
                Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 0.01 },
                Training = new TrainingSpec { BatchSize = 12, SeqLen = 32, Epochs = 100, MaxSteps = Steps, Seed = 11, Threads = 1, EvalInterval = Steps, CheckpointInterval = 0 },
            }));

            var tls = await compose.ClientTlsAsync();
            cli.Token = await compose.CreateAdminTokenAsync("e2e");
            using (var client = new CoordinatorClient(compose.Address, tls, cli.Token))
                await client.WaitForIdleWorkersAsync(3, TimeSpan.FromSeconds(90));
            cli.TlsDir = tls;

            var (job, watch) = await cli.SubmitAsync(compose.Address, spec, workers: 3, watch: true);
            Assert.True(watch.ExitCode == 0, watch.ToString());
            Assert.Equal(3, (await cli.StatusWorkersAsync(compose.Address, job)).Count);
            var steps = Regex.Matches(watch.Stdout, @"^step (?<n>\d+)/\d+ .*? loss (?<loss>[0-9.]+) .*? workers (?<w>\d+)", RegexOptions.Multiline);
            Assert.True(steps.Count == Steps, $"{steps.Count} step lines, expected {Steps}:\n{watch}");
            Assert.All(steps, m => Assert.Equal("3", m.Groups["w"].Value));
            var losses = steps.Select(m => double.Parse(m.Groups["loss"].Value, CultureInfo.InvariantCulture)).ToArray();
            Assert.True(losses[^4..].Average() < losses[0] - 0.3, $"the loss did not fall: {string.Join(", ", losses)}");
            Assert.Matches(@"(?m)^step \d+ validation: loss [0-9.]+", watch.Stdout);

            // Each worker read its rows itself, from the s3 service into its own cache.
            var workers = await compose.ContainerIdsAsync("worker");
            Assert.Equal(3, workers.Count);
            foreach (var id in workers)
            {
                var cached = await DockerEngine.CheckAsync("exec", id, "find", "/tmp/dtrain-s3-cache", "-type", "f");
                Assert.True(cached.Stdout.Trim().Length > 0, $"worker {id[..12]} has nothing in its S3 cache:\n{cached}");
            }
            var s3Log = await compose.CheckAsync(TimeSpan.FromSeconds(60), "--profile", "s3", "logs", "--no-color", "s3");
            Assert.Contains("GET /datasets/e2e/moby/train-00000.tokens", s3Log.Stdout + s3Log.Stderr);
        }
        catch
        {
            await compose.PrintLogsAsync();
            throw;
        }
    }
}
