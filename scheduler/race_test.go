//go:build race

package scheduler

const raceSlowdown = 10
