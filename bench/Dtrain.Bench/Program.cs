using Dtrain.Bench;
using static TorchSharp.torch;

// Usage: dtrain-bench speed [threads] | cluster | allreduce | quality [moby|spam|recall ...]
var mode = args.FirstOrDefault() ?? "speed";
switch (mode)
{
    case "speed":
    {
        var threads = args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 2;
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
    case "cluster":
    {
        var root = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(root, "Distributed.sln"))) root = Path.GetDirectoryName(root) ?? throw new InvalidOperationException("run from inside the repository");
        return ClusterBench.Run(root);
    }
    case "quality":
    {
        var root = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(root, "Distributed.sln"))) root = Path.GetDirectoryName(root) ?? throw new InvalidOperationException("run from inside the repository");
        return QualityBench.Run(Path.Combine(root, "examples"), args.Skip(1).ToArray());
    }
    case "allreduce":
        return CollectiveBench.Run(args);
    default:
        Console.Error.WriteLine("usage: dtrain-bench speed [threads] | quality [moby|spam|recall ...]");
        return 2;
}
