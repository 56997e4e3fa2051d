using Dtrain.Specs;

namespace Dtrain.Data;

/// <summary>Creates tokenizers: fitted to the training split, or rebuilt exactly from a saved <see cref="TokenizerState"/>.</summary>
public static class TokenizerFactory
{
    /// <summary>Fits a tokenizer of <paramref name="spec"/>'s kind to <paramref name="trainingTexts"/> (the training split only, never validation).</summary>
    public static ITokenizer Fit(TokenizerSpec spec, IEnumerable<string> trainingTexts)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(trainingTexts);
        return spec.Kind switch
        {
            TokenizerKinds.Char => CharTokenizer.Fit(trainingTexts, spec.MinFrequency, spec.MaxVocab, spec.Lowercase),
            TokenizerKinds.Word => WordTokenizer.Fit(trainingTexts, spec.MinFrequency, spec.MaxVocab, spec.Lowercase),
            _ => throw new ArgumentException($"unknown tokenizer kind \"{spec.Kind}\"; expected one of: {string.Join(", ", TokenizerKinds.All)}", nameof(spec)),
        };
    }

    /// <summary>Rebuilds the tokenizer saved as <paramref name="state"/>; throws <see cref="InvalidDataException"/> if the state is malformed.</summary>
    public static ITokenizer FromState(TokenizerState state)
    {
        if (state is null) throw new InvalidDataException("tokenizer state is missing");
        switch (state.Kind)
        {
            case TokenizerKinds.Char:
                Vocabulary.Validate(state.Tokens, state.Kind, CharTokenizer.TokenProblem);
                return new CharTokenizer(state.Tokens, state.Lowercase);
            case TokenizerKinds.Word:
                Vocabulary.Validate(state.Tokens, state.Kind, WordTokenizer.TokenProblem);
                return new WordTokenizer(state.Tokens, state.Lowercase);
            default:
                throw new InvalidDataException($"tokenizer state has unknown kind \"{state.Kind}\"; expected one of: {string.Join(", ", TokenizerKinds.All)}");
        }
    }
}
