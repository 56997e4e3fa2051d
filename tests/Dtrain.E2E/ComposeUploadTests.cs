using System.Globalization;
using System.Text.RegularExpressions;
using Dtrain.E2E.Support;
using Dtrain.Protos.Jobs;
using Dtrain.Specs;
using Google.Protobuf;
using Grpc.Core;
using Xunit.Abstractions;

namespace Dtrain.E2E;

/// <summary>
/// Data on deploy/docker-compose.yml as shipped. Uploads: the coordinator mounts the `uploads` volume read-write and
/// prepares the files `dtrain submit` uploads into a dataset in its shared data directory /uploads/JOB (a fresh volume is
/// writable by the image's user), which the 2 workers read from their read-only mount of the same volume: the job says
/// it prepared its files into that dataset, the dataset is whole in every worker's /uploads, the job trains on both and
/// its loss falls. An upload announced over 1 GiB is not refused for its size (MaxUploadBytes follows
/// MaxPendingUploadBytes), as it is by a coordinator that reads uploads into memory. And a user's own dataset:
/// `dtrain prepare` on the host, copied into the `datasets` volume with the compose file's recipe (cp as the image's
/// user), is named by a job as data.dataset /datasets/NAME (the coordinator's data root) and trains on both workers.
/// </summary>
[Collection(DockerCollection.Name)]
public sealed class ComposeUploadTests(ImageFixture image, ITestOutputHelper output)
{
    const int Steps = 16;
    const int DatasetSteps = 8;
    const string SharedDataDir = "/uploads";

    [DockerFact]
    public async Task Compose_coordinator_prepares_an_uploaded_file_into_a_dataset_the_workers_train_from()
    {
        image.EnsureBuilt(output);
        using var tmp = new TempDir();
        var cli = new HostCli(output, tmp.Path);
        var spec = E2EJobs.MobyDickLm(tmp, steps: Steps);
        var compose = new ComposeProject(output);
        await using var _ = compose;
        try
        {
            await compose.CheckAsync(TimeSpan.FromMinutes(4), "up", "-d", "--scale", "worker=2");
            var tls = await compose.ClientTlsAsync();
            cli.Token = await compose.CreateAdminTokenAsync("e2e");
            using var client = new CoordinatorClient(compose.Address, tls, cli.Token);
            await client.WaitForIdleWorkersAsync(2, TimeSpan.FromSeconds(90));
            cli.TlsDir = tls;

            // `dtrain submit` uploads moby-train.txt and moby-valid.txt; the coordinator prepares them as the job starts.
            var (job, watch) = await cli.SubmitAsync(compose.Address, spec, workers: 2, watch: true);
            Assert.True(watch.ExitCode == 0, watch.ToString());
            var dataset = $"{SharedDataDir}/{job}";
            Assert.Contains($"data: preparing the job's files into the dataset {dataset}", watch.Stdout);
            Assert.Equal(2, (await cli.StatusWorkersAsync(compose.Address, job)).Count);
            var steps = Regex.Matches(watch.Stdout, @"^step (?<n>\d+)/\d+ .*? loss (?<loss>[0-9.]+) .*? workers (?<w>\d+)", RegexOptions.Multiline);
            Assert.True(steps.Count == Steps, $"{steps.Count} step lines, expected {Steps}:\n{watch}");
            Assert.All(steps, m => Assert.Equal("2", m.Groups["w"].Value));
            var losses = steps.Select(m => double.Parse(m.Groups["loss"].Value, CultureInfo.InvariantCulture)).ToArray();
            Assert.True(losses[^4..].Average() < losses[0] - 0.3, $"the loss did not fall: {string.Join(", ", losses)}");
            Assert.Matches(@"(?m)^step \d+ validation: loss [0-9.]+", watch.Stdout);

            // The dataset is whole (its manifest is written last) in the volume every worker mounts, read-only.
            var workers = await compose.ContainerIdsAsync("worker");
            Assert.Equal(2, workers.Count);
            foreach (var id in workers)
            {
                var listed = await DockerEngine.RunAsync("exec", id, "ls", "-l", dataset);
                Assert.True(listed.ExitCode == 0 && Regex.IsMatch(listed.Stdout, @"\smanifest\.json\s*$", RegexOptions.Multiline),
                    $"worker {id[..12]} does not see the dataset {dataset} with its manifest:\n{listed}");
                Assert.Contains("train-00000.tokens", listed.Stdout);
                foreach (var dir in new[] { SharedDataDir, "/datasets" })
                {
                    var write = await DockerEngine.RunAsync("exec", id, "touch", $"{dir}/written-by-a-worker");
                    Assert.True(write.ExitCode != 0 && write.Stderr.Contains("Read-only file system", StringComparison.Ordinal),
                        $"worker {id[..12]} could write into {dir}:\n{write}");
                }
            }

            // The upload limit follows the shared data directory: an upload announced at 1 GiB + 1 is accepted for its
            // size and fails only because it ends early (without the directory: ResourceExhausted, "exceeds MaxUploadBytes").
            const long OverOneGiB = (1L << 30) + 1;
            using var upload = client.Jobs.Upload(deadline: DateTime.UtcNow.AddSeconds(60));
            await upload.RequestStream.WriteAsync(new FileChunk { Name = "big.txt", TotalBytes = OverOneGiB, Data = ByteString.CopyFrom(new byte[4096]) });
            await upload.RequestStream.CompleteAsync();
            var refused = await Assert.ThrowsAsync<RpcException>(async () => await upload.ResponseAsync);
            output.WriteLine($"upload of 4096 of an announced {OverOneGiB} bytes: {refused.StatusCode} {refused.Status.Detail}");
            Assert.True(refused.StatusCode == StatusCode.InvalidArgument && refused.Status.Detail.Contains($"upload ended after 4096 of {OverOneGiB} bytes", StringComparison.Ordinal),
                $"{refused.StatusCode}: {refused.Status.Detail}");

            // A dataset of the user's: prepared on the host, copied into the `datasets` volume as the compose file says
            // (`docker run --rm -v PROJECT_datasets:/datasets -v $PWD/datasets:/src:ro --entrypoint cp IMAGE -r /src/. /datasets/`).
            await cli.CheckAsync("prepare", "moby-train.txt", "--validation", "moby-valid.txt", "-o", "datasets/moby");
            await DockerEngine.CheckAsync("run", "--rm", "-v", $"{compose.Name}_datasets:/datasets", "-v", $"{Path.Combine(tmp.Path, "datasets")}:/src:ro",
                "--entrypoint", "cp", ImageFixture.Image, "-r", "/src/.", "/datasets/");
            var coordinatorWrite = await compose.RunAsync(TimeSpan.FromSeconds(60), "exec", "-T", "coordinator", "touch", "/datasets/written-by-the-coordinator");
            Assert.True(coordinatorWrite.ExitCode != 0 && coordinatorWrite.Stderr.Contains("Read-only file system", StringComparison.Ordinal),
                $"the coordinator could write into /datasets:\n{coordinatorWrite}");
            // `prepare --on-cluster` cannot write into the read-only volume: refused before any worker is asked, naming
            // the output, the volume and what to do instead.
            var onCluster = await cli.RunAsync("prepare", "--on-cluster", "-c", compose.Address, "/datasets/moby/tokenizer.json", "-o", "/datasets/again");
            Assert.True(onCluster.ExitCode != 0, onCluster.ToString());
            Assert.Contains("-o /datasets/again: the coordinator cannot write in /datasets", onCluster.Stderr);
            Assert.Contains("Read-only file system", onCluster.Stderr);
            Assert.Contains("prepare on the host", onCluster.Stderr);

            var datasetSpec = tmp.Write("dataset.json", JobSpecSerializer.Serialize(new JobSpec
            {
                Name = "e2e-dataset",
                Task = TaskKinds.LanguageModel,
                Data = new DataSpec { Dataset = "/datasets/moby" },
                Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 1, EmbeddingDim = 16, HiddenSize = 48 },
                Optimizer = new OptimizerSpec { Kind = OptimizerKinds.Adam, Lr = 0.01 },
                Training = new TrainingSpec { BatchSize = 12, SeqLen = 32, Epochs = 100, MaxSteps = DatasetSteps, Seed = 11, Threads = 1, EvalInterval = DatasetSteps, CheckpointInterval = 0 },
            }));
            // `dtrain submit` uploads nothing for a data.dataset job (no --coordinator-data needed): the path is the
            // coordinator's and the workers'.
            var (datasetJob, datasetWatch) = await cli.SubmitAsync(compose.Address, datasetSpec, workers: 2, watch: true);
            Assert.True(datasetWatch.ExitCode == 0, datasetWatch.ToString());
            Assert.DoesNotContain("preparing the job's files", datasetWatch.Stdout);
            Assert.Equal(2, (await cli.StatusWorkersAsync(compose.Address, datasetJob)).Count);
            var datasetSteps = Regex.Matches(datasetWatch.Stdout, @"^step (?<n>\d+)/\d+ .*? loss (?<loss>[0-9.]+) .*? workers (?<w>\d+)", RegexOptions.Multiline);
            Assert.True(datasetSteps.Count == DatasetSteps, $"{datasetSteps.Count} step lines, expected {DatasetSteps}:\n{datasetWatch}");
            Assert.All(datasetSteps, m => Assert.Equal("2", m.Groups["w"].Value));
            Assert.Matches(@"(?m)^step \d+ validation: loss [0-9.]+", datasetWatch.Stdout);
        }
        catch
        {
            await compose.PrintLogsAsync();
            throw;
        }
    }
}
