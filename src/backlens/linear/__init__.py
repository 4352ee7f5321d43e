"""The linear core: Moments, ridge, analytic maps, LinearMap, scores, the sklearn estimator."""
