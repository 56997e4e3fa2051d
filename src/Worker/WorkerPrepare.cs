using System.Text.Json;
using Dtrain.Data;
using Dtrain.Data.Datasets;
using Dtrain.Protos.Worker;

namespace Dtrain.Worker;

/// <summary>
/// This worker's share of `dtrain prepare --on-cluster` (docs/data.md): counting the tokens of a part of the sources,
/// then encoding it into shards in the dataset's temporary directory, on every core, off the gRPC threads. The paths
/// are the coordinator's, which the worker must see at the same path (a shared data root); errors name the file.
/// </summary>
public static class WorkerPrepare
{
    static PrepareOptions Part(string json)
    {
        PrepareOptions o;
        try
        {
            o = DatasetPreparer.PartFromJson(json);
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"the prepare options are not valid JSON: {e.Message}");
        }
        return o with { Threads = Environment.ProcessorCount };
    }

    public static async Task<PrepareCountReply> CountAsync(PrepareCountRequest request, CancellationToken cancel)
    {
        var part = Part(request.OptionsJson);
        if (request.Measure)
        {
            var (length, pieces) = await Task.Run(() => DatasetPreparer.MeasurePart(part, cancel), cancel).ConfigureAwait(false);
            return new PrepareCountReply { Length = length, TrainPieces = pieces };
        }
        DatasetPreparer.PartCut? at = request.JoinerCounted ? new(request.TrainJoiner, request.Cut, request.AllValidation) : null;
        var counts = await Task.Run(() => DatasetPreparer.CountPart(part, at, cancel), cancel).ConfigureAwait(false);
        var reply = new PrepareCountReply { TrainPieces = counts.TrainPieces, ValidationPieces = counts.ValidationPieces };
        reply.Words.Add(counts.Words);
        reply.Chars.Add(counts.Chars);
        reply.TrainLabels.AddRange(counts.TrainLabels);
        return reply;
    }

    public static async Task<PrepareEncodeReply> EncodeAsync(PrepareEncodeRequest request, CancellationToken cancel)
    {
        var part = Part(request.OptionsJson);
        var state = JsonSerializer.Deserialize<TokenizerState>(request.TokenizerJson, DatasetLayout.TokenizerJson) ?? throw new ArgumentException("no tokenizer");
        var tokenizer = TokenizerFactory.FromState(state);
        var encoded = await Task.Run(() => DatasetPreparer.EncodePart(part, request.Part, request.Directory, tokenizer, [.. request.Labels], request.TrainJoiner, request.ValidationJoiner, request.Cut, request.AllValidation, cancel), cancel).ConfigureAwait(false);
        return new PrepareEncodeReply { ResultJson = JsonSerializer.Serialize(encoded, DatasetLayout.Json) };
    }
}
