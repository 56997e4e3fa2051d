using Dtrain.Models;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Inference;

/// <summary>One text's predicted label and the probability of every label.</summary>
public sealed record Prediction(string Label, double Probability, IReadOnlyDictionary<string, double> Probabilities);

/// <summary>Classifies texts with a trained classifier, encoding them exactly as in training.</summary>
public static class Predictor
{
    public static IReadOnlyList<Prediction> Predict(TrainedModel trained, IReadOnlyList<string> texts, int batchSize = 64) =>
        Predict(trained, Encode(trained, texts), batchSize);

    /// <summary>The token ids of each text as <see cref="Predict(TrainedModel, IReadOnlyList{string}, int)"/> reads it (cut to data.max_length characters).</summary>
    public static int[][] Encode(TrainedModel trained, IReadOnlyList<string> texts)
    {
        var maxChars = trained.Spec.Data.MaxLength;
        return texts.Select(t => PreparedData.EncodeNonEmpty(trained.Tokenizer, t.Length > maxChars ? t[..maxChars] : t)).ToArray();
    }

    /// <summary>
    /// Classifies texts already encoded by <see cref="Encode"/>. Every sequence must hold at least one id and every id be
    /// below the vocabulary's size (libtorch's embedding would abort the process on another): else an ArgumentException
    /// naming the sequence and position.
    /// </summary>
    public static IReadOnlyList<Prediction> Predict(TrainedModel trained, int[][] sequences, int batchSize = 64)
    {
        if (trained.Engine.Model is not RecurrentClassifier clf)
            throw new ArgumentException($"{trained.Path} holds a {trained.Spec.Task} model; predict needs a classification checkpoint");
        var vocab = trained.Tokenizer.VocabSize;
        for (var i = 0; i < sequences.Length; i++)
        {
            if (sequences[i] is not { Length: > 0 } ids) throw new ArgumentException($"sequences[{i}] is empty: every text has at least one id (Encode gives <unk> for an empty one)", nameof(sequences));
            for (var j = 0; j < ids.Length; j++)
                if ((uint)ids[j] >= (uint)vocab) throw new ArgumentException($"sequences[{i}][{j}] = {ids[j]} is not a token id of this model (0 to {vocab - 1})", nameof(sequences));
        }
        var labels = new int[sequences.Length];
        var source = new ClassificationBatches(sequences, labels, batchSize, seed: 0, shuffle: false);
        var results = new List<Prediction>(sequences.Length);
        using var noGrad = no_grad();
        for (long k = 0; k < source.StepsPerEpoch; k++)
        {
            var position = new StepPosition(0, k);
            using var batch = source.Get(position, 0, source.RowsAt(position));
            if (batch is null) break;
            using var scope = NewDisposeScope();
            var probs = nn.functional.softmax(clf.Forward(batch.Inputs, batch.Lengths!), 1).cpu();
            var values = probs.data<float>().ToArray();
            for (var r = 0; r < batch.Rows; r++)
            {
                var dict = new Dictionary<string, double>();
                var best = 0;
                for (var c = 0; c < clf.Classes; c++)
                {
                    dict[trained.Labels.Names[c]] = values[r * clf.Classes + c];
                    if (values[r * clf.Classes + c] > values[r * clf.Classes + best]) best = c;
                }
                results.Add(new Prediction(trained.Labels.Names[best], values[r * clf.Classes + best], dict));
            }
        }
        return results;
    }
}
