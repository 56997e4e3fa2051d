namespace Dtrain; internal static class Placeholder { }
