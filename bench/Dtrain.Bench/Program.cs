using Dtrain.Bench;
using static TorchSharp.torch;

// Usage: dtrain-bench speed [threads] | cluster [rounds] [w1,w2,gru,spam] [--report FILE] | allreduce
//        | pipeline [--transports grpc,shm,tcp] [--layouts 2x4,4x8] | pipeline links [rounds] | elastic
//        | history | activity | prepare [--mb N] [--threads 1,2] | dataset-job [--sizes 10MB,100MB,1GB] [--steps N] [--dir DIR] [--s3 s3://bucket/prefix] | quality [moby|spam|recall ...] | compression [steps] | compression codec [rounds] | scaling-model | recurrent
//        | compose-allreduce [w1,w2] [--warmup N] [--steps N] [--clusters loopback,compose] [--transports auto,tcp] [--image TAG] [--report FILE]
//        | serve [--requests N] [--total N] [--max-batch N] [--max-wait-ms N] [--words N] [--vocab N] [--sizes EMBxHIDDEN[xLAYERS],... | --embedding N --hidden N --layers N | --model PATH]
//        | inference [--calls N] [--texts PATH.jsonl] [--model PATH]
var mode = args.FirstOrDefault() ?? "speed";
try
{
    return Dispatch();
}
catch (ArgumentException e)
{
    Console.Error.WriteLine($"dtrain-bench {mode}: {e.Message}");
    return 2;
}
catch (BenchFailureException e)
{
    Console.Error.WriteLine($"dtrain-bench {mode}: {e.Message}");
    return 1;
}

// The positional number at args[index] (fallback when absent; -1: required), bounded: a bad one is exit 2 naming it, not a FormatException.
int Positional(int index, string name, int fallback, int min, int max) =>
    index < args.Length ? BenchArgs.Number(name, args[index], min, max)
        : fallback >= 0 ? fallback : throw new ArgumentException($"{name} is required");

int Dispatch()
{
    switch (mode)
    {
        case "speed":
        {
            var threads = Positional(1, "threads", 2, 1, 64);
            set_num_threads(threads);
            Console.WriteLine("W1: char LSTM LM, vocab 96, embedding 64, hidden 256, 2 layers, batch 32 x 64, Adam 2e-3, clip 1.0");
            for (var round = 0; round < 3; round++)
            {
                // Alternate the order so drift on a noisy machine does not favour one side.
                double plain, engine;
                if (round % 2 == 0)
                {
                    plain = PlainCharLm.SecondsPerStep(96, 64, 256, 2, 32, 64, 5, 30);
                    engine = EngineLoop.SecondsPerStep(96, 64, 256, 2, 32, 64, 5, 30);
                }
                else
                {
                    engine = EngineLoop.SecondsPerStep(96, 64, 256, 2, 32, 64, 5, 30);
                    plain = PlainCharLm.SecondsPerStep(96, 64, 256, 2, 32, 64, 5, 30);
                }
                var replica = ReplicaLoop.SecondsPerStep(96, 64, 256, 2, 32, 64, 5, 30, threads).GetAwaiter().GetResult();
                Console.WriteLine($"round {round + 1} threads={threads}: plain TorchSharp {plain * 1e3:F1} ms/step ({32 / plain:F1} samples/s) | engine {engine * 1e3:F1} ms/step ({32 / engine:F1} samples/s, {plain / engine:F3}x) | replica on a torch thread {replica * 1e3:F1} ms/step ({plain / replica:F3}x)");
            }
            return 0;
        }
        case "loop":
        {
            // One loop alone in a fresh process: loop plain|plain-tuned|engine|engine-layers|replica [threads] [warmup] [steps]
            // (plain-tuned is the plain loop; the caller starts it with dtrain's process settings.)
            var which = args.Length > 1 ? args[1] : "engine";
            var threads = Positional(2, "threads", 2, 1, 64);
            var warmup = Positional(3, "warmup", 10, 0, 100_000);
            var steps = Positional(4, "steps", 40, 1, 100_000);
            Console.Error.WriteLine($"allocator: {Dtrain.Runtime.NativeAllocator.Describe()}");
            if (which != "replica") set_num_threads(threads);
            var seconds = which switch
            {
                "plain" or "plain-tuned" => PlainCharLm.SecondsPerStep(96, 64, 256, 2, 32, 64, warmup, steps),
                "engine" => EngineLoop.SecondsPerStep(96, 64, 256, 2, 32, 64, warmup, steps),
                // The model overlap builds: one module per recurrent layer (same math).
                "engine-layers" => EngineLoop.SecondsPerStep(96, 64, 256, 2, 32, 64, warmup, steps, perLayer: true),
                "replica" => ReplicaLoop.SecondsPerStep(96, 64, 256, 2, 32, 64, warmup, steps, threads).GetAwaiter().GetResult(),
                _ => throw new ArgumentException($"unknown loop {which}"),
            };
            Console.WriteLine($"{which} threads={threads}: {seconds * 1e3:F1} ms/step ({32 / seconds:F1} samples/s) seconds_per_step={seconds.ToString("R", System.Globalization.CultureInfo.InvariantCulture)}");
            return 0;
        }
        case "pipeline" when args.Length > 1 && args[1] == "links":
            return StageLinkBench.Run(Positional(2, "rounds", 3, 1, 100));
        case "pipeline":
            return PipelineBench.Run(args.Skip(1).ToArray());
        case "cluster":
        {
            var root = AppContext.BaseDirectory;
            while (!File.Exists(Path.Combine(root, "Distributed.sln"))) root = Path.GetDirectoryName(root) ?? throw new InvalidOperationException("run from inside the repository");
            return ClusterBench.Run(root, args.Skip(1).ToArray());
        }
        case "train":
        {
            // One single-process run in a fresh process: train SPEC WARMUP -> samples/s over the steps after WARMUP.
            var spec = Dtrain.Specs.JobSpecSerializer.Load(args[1]);
            var warmup = Positional(2, "WARMUP", -1, 0, 100_000);
            var observer = new StepClock(warmup, spec.Training.MaxSteps);
            using var output = new TempDir();
            Dtrain.Training.Trainer.Run(spec, Path.GetDirectoryName(Path.GetFullPath(args[1]))!, new Dtrain.Training.TrainOptions { OutputDir = output.Path }, observer, CancellationToken.None);
            var seconds = (observer.End - observer.Start).TotalSeconds;
            Console.WriteLine($"samples_per_s={((spec.Training.MaxSteps - warmup) * spec.Training.BatchSize / seconds).ToString("R", System.Globalization.CultureInfo.InvariantCulture)}");
            return 0;
        }
        case "compression" when args.Length > 1 && args[1] == "codec":
            return CompressionBench.Codec(Positional(2, "rounds", 5, 1, 100));
        case "compression":
        {
            var root = AppContext.BaseDirectory;
            while (!File.Exists(Path.Combine(root, "Distributed.sln"))) root = Path.GetDirectoryName(root) ?? throw new InvalidOperationException("run from inside the repository");
            return CompressionBench.Run(root, Positional(1, "steps", 300, 1, 100_000));
        }
        case "scaling-model":
            return ScalingModel.Run(args.Skip(1).ToArray());
        case "quality":
        {
            var root = AppContext.BaseDirectory;
            while (!File.Exists(Path.Combine(root, "Distributed.sln"))) root = Path.GetDirectoryName(root) ?? throw new InvalidOperationException("run from inside the repository");
            return QualityBench.Run(Path.Combine(root, "examples"), args.Skip(1).ToArray());
        }
        case "allreduce":
            return CollectiveBench.Run(args);
        case "seal":
            return SealBench.Run(args);
        case "compose-allreduce":
        {
            var root = AppContext.BaseDirectory;
            while (!File.Exists(Path.Combine(root, "Distributed.sln"))) root = Path.GetDirectoryName(root) ?? throw new InvalidOperationException("run from inside the repository");
            return ComposeBench.Run(root, args.Skip(1).ToArray());
        }
        case "elastic":
            return ElasticBench.Run();
        case "history":
            return HistoryBench.Run();
        case "prepare":
        {
            var root = AppContext.BaseDirectory;
            while (!File.Exists(Path.Combine(root, "Distributed.sln"))) root = Path.GetDirectoryName(root) ?? throw new InvalidOperationException("run from inside the repository");
            return PrepareBench.Run(root, args.Skip(1).ToArray());
        }
        case "serve-clients":
            return ServeBench.Clients(args.Skip(1).ToArray());
        case "serve":
            return ServeBench.Run(args.Skip(1).ToArray());
        case "inference":
        {
            var root = AppContext.BaseDirectory;
            while (!File.Exists(Path.Combine(root, "Distributed.sln"))) root = Path.GetDirectoryName(root) ?? throw new InvalidOperationException("run from inside the repository");
            return InferenceBench.Run(root, args.Skip(1).ToArray());
        }
        case "dataset-job":
        {
            var root = AppContext.BaseDirectory;
            while (!File.Exists(Path.Combine(root, "Distributed.sln"))) root = Path.GetDirectoryName(root) ?? throw new InvalidOperationException("run from inside the repository");
            return DatasetJobBench.Run(root, args.Skip(1).ToArray());
        }
        case "prepare-one":
            return PrepareBench.One(args);
        case "recurrent":
            return RecurrentBench.Run(args[1..]);
        case "activity":
            return ActivityBench.Run();
        default:
            Console.Error.WriteLine("usage: dtrain-bench speed [threads] | cluster [rounds] [w1,w2,gru,spam] [--systems TEXT,...] [--report FILE] | allreduce [--transports ...] [--workers ...] [--sizes ...] [--rounds N] [--report FILE] | seal [--sizes 16,64,256,1024] [--mb 64] [--key 16|32] [--rounds 3] | compose-allreduce [w1,w2] [--warmup N] [--steps N] [--clusters loopback,compose] [--transports auto,tcp] [--image TAG] [--report FILE] | pipeline [--transports grpc,shm,tcp] [--layouts 2x4,4x8] | pipeline links [rounds] | elastic | prepare [--mb N] [--threads 1,2] | dataset-job [--sizes 10MB,100MB,1GB] [--steps N] [--dir DIR] [--s3 s3://bucket/prefix] | quality [moby|spam|recall ...] | compression [steps] | compression codec [rounds] | scaling-model | recurrent [--cell lstm|gru] [--hidden 256,1024] [--rows 8,16,32,64] [--batch 32] [--rounds 3] | serve [--help] | inference [--help]");
            return 2;
    }
}
