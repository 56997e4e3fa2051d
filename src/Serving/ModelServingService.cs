using Dtrain.Inference;
using Dtrain.Protos.Serving;
using Grpc.Core;
using Proto = Dtrain.Protos.Serving;

namespace Dtrain.Serving;

/// <summary>
/// The model server over gRPC (protos/dtrain/serving.proto, on --grpc-port): the same checks and messages as the HTTP/JSON
/// routes (fields named texts[2], top_k, length, ...: InvalidArgument with the field also in the "field" trailer), the same
/// queue and batching (a gRPC and an HTTP request may share a forward pass), the same token ("authorization: Bearer TOKEN"
/// metadata; Unauthenticated without it) and the same drain (Unavailable once draining, calls taken are answered).
/// </summary>
internal sealed class ModelServingService(ModelServer server) : ModelServing.ModelServingBase
{
    /// <summary>The service's method paths (/dtrain.serving.v1.ModelServing/Predict, ...): the route label of their metrics.</summary>
    public static readonly HashSet<string> Methods = [.. ModelServing.Descriptor.Methods.Select(m => $"/{ModelServing.Descriptor.FullName}/{m.Name}")];

    public override async Task<PredictReply> Predict(Proto.PredictRequest request, ServerCallContext context)
    {
        var model = Admit(context, classifier: true);
        PredictRequest valid;
        try
        {
            valid = RequestReader.Predict(request.Texts, request.HasTopK ? request.TopK : null, model.Spec.Data.MaxLength, model.Labels.Count, server.Options.MaxTexts);
        }
        catch (BadRequestException e)
        {
            throw Invalid(e);
        }
        var work = new PredictWork { Texts = valid.Texts, Aborted = context.CancellationToken };
        if (!server.Queue.TryEnqueue(work)) throw Refused(server.QueueFull);
        var predictions = await Answered(work.Done.Task);
        var reply = new PredictReply();
        foreach (var p in ModelServer.Ranked(predictions, valid.TopK, model.Labels.Count))
        {
            var prediction = new Proto.TextPrediction { Label = p.Label, Probability = p.Probability };
            prediction.Top.AddRange(p.Top.Select(t => new Proto.LabelProbability { Label = t.Label, Probability = t.Probability }));
            reply.Predictions.Add(prediction);
        }
        return reply;
    }

    public override async Task<GenerateReply> Generate(Proto.GenerateRequest request, ServerCallContext context)
    {
        var work = StartGeneration(request, stream: false, context);
        var text = await Answered(work.Done.Task);
        return new GenerateReply { Text = text, Tokens = work.Length };
    }

    public override async Task GenerateStream(Proto.GenerateRequest request, IServerStreamWriter<GenerateChunk> responseStream, ServerCallContext context)
    {
        var work = StartGeneration(request, stream: true, context);
        await foreach (var piece in work.Pieces!.Reader.ReadAllAsync(CancellationToken.None))
            await responseStream.WriteAsync(new GenerateChunk { Text = piece }, context.CancellationToken);
        var text = await Answered(work.Done.Task);
        await responseStream.WriteAsync(new GenerateChunk { Text = text, Done = true, Tokens = work.Length }, context.CancellationToken);
    }

    GenerateWork StartGeneration(Proto.GenerateRequest request, bool stream, ServerCallContext context)
    {
        var model = Admit(context, classifier: false);
        GenerateRequest valid;
        try
        {
            valid = RequestReader.Generate(request.HasPrompt ? request.Prompt : null, request.HasLength ? request.Length : null,
                request.HasTemperature ? request.Temperature : null, request.HasTopK ? request.TopK : null, request.HasSeed ? request.Seed : null,
                model.Spec.Data.MaxLength, server.Options.MaxGenerateLength);
        }
        catch (BadRequestException e)
        {
            throw Invalid(e);
        }
        var work = server.Generation(valid, stream, context.CancellationToken);
        if (!server.Queue.TryEnqueue(work)) throw Refused(server.QueueFull);
        return work;
    }

    /// <summary>The token first (as the HTTP routes check it before anything else), then whether the model can take the call.</summary>
    TrainedModel Admit(ServerCallContext context, bool classifier)
    {
        if (server.TokenRefusal(context.RequestHeaders.GetValue("authorization") ?? "") is { } unauthenticated)
            throw new RpcException(new Status(StatusCode.Unauthenticated, unauthenticated));
        var (model, refusal) = server.Admit(classifier, grpc: true);
        return refusal is null ? model! : throw Refused(refusal);
    }

    static RpcException Refused(ModelServer.Refusal refusal) => new(new Status(refusal.Kind switch
    {
        ModelServer.RefusalKind.QueueFull => StatusCode.ResourceExhausted,
        ModelServer.RefusalKind.WrongModel => StatusCode.Unimplemented,
        ModelServer.RefusalKind.Failed => StatusCode.FailedPrecondition,
        _ => StatusCode.Unavailable,
    }, refusal.Message));

    static RpcException Invalid(BadRequestException e) => new(new Status(StatusCode.InvalidArgument, e.Message), new Metadata { { "field", e.Field } });

    /// <summary>The inference thread's answer; its failure (a model whose output is not finite, ...) is Internal with its message.</summary>
    static async Task<T> Answered<T>(Task<T> done)
    {
        try
        {
            return await done;
        }
        catch (Exception e) when (e is not (RpcException or OperationCanceledException))
        {
            throw new RpcException(new Status(StatusCode.Internal, e.Message));
        }
    }
}
