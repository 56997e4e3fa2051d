// A consumer of the Dtrain.Inference and Dtrain.Client packages. Prints one JSON document per line:
//   predict MODEL TEXT...                             {"predict": [{"label", "probability", "top": [[label, p], ...]}]}
//   parallel MODEL THREADS TEXT...                    the same texts predicted from THREADS threads at once: {"parallel": true|false}
//   generate MODEL PROMPT LENGTH TEMPERATURE TOPK SEED {"generate": "text"}
//   remote ADDRESS SPEC_FILE CHECKPOINT_OUT           submit, watch to the end, status, download: {"job", "events", "state", "bytes"}
using System.Globalization;
using System.Text.Json;
using Dtrain.Client;
using Dtrain.Inference;
using Dtrain.Protos.Jobs;

var inv = CultureInfo.InvariantCulture;
switch (args[0])
{
    case "predict":
    {
        using var model = DtrainModel.Load(args[1], poolSize: 2);
        var predictions = model.Predict(args[2..], topK: 2);
        Print(new { runtime = model.Runtime, predict = predictions.Select(p => new { label = p.Label, probability = p.Probability, top = p.Top.Select(kv => new object[] { kv.Key, kv.Value }) }) });
        break;
    }
    case "parallel":
    {
        using var model = DtrainModel.Load(args[1], poolSize: 2);
        var threads = int.Parse(args[2], inv);
        var texts = args[3..];
        var expected = model.Predict(texts, 2).Select(p => p.Probability).ToArray();
        var same = true;
        Parallel.For(0, threads * 4, new ParallelOptions { MaxDegreeOfParallelism = threads }, i =>
        {
            var got = model.Predict(texts, 2).Select(p => p.Probability).ToArray();
            if (!got.SequenceEqual(expected)) same = false;
        });
        Print(new { parallel = same });
        break;
    }
    case "generate":
    {
        using var model = DtrainModel.Load(args[1], poolSize: 1);
        var text = model.Generate(args[2], int.Parse(args[3], inv), double.Parse(args[4], inv), int.Parse(args[5], inv), long.Parse(args[6], inv));
        Print(new { runtime = model.Runtime, generate = text });
        break;
    }
    case "remote":
    {
        using var client = new DtrainClient(new DtrainClientOptions { Address = args[1] });
        var job = await client.SubmitAsync(args[2]);
        var events = 0;
        JobState last = JobState.Unspecified;
        await foreach (var e in client.WatchAsync(job))
        {
            events++;
            if (e.KindCase == JobEvent.KindOneofCase.State) last = e.State.State;
        }
        var status = await client.StatusAsync(job);
        var bytes = status.State == JobState.Succeeded ? await client.DownloadCheckpointAsync(job, args[3]) : 0;
        Print(new { job, events, watched = last.ToString(), state = status.State.ToString(), step = status.Step, bytes });
        break;
    }
    default:
        Console.Error.WriteLine($"unknown mode {args[0]}");
        return 2;
}
return 0;

static void Print(object value) => Console.WriteLine(JsonSerializer.Serialize(value));
