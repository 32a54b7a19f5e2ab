(define (problem put-apple-on-diningtable)
  (:domain kitchen)
  (:objects
    agent - agent
    start countertop_place diningtable_place fridge_place - location
    countertop diningtable fridge - receptacle
    apple mug - object)
  (:init
    (atlocation agent start)
    (handempty agent)
    (receptacleatlocation countertop countertop_place)
    (receptacleatlocation diningtable diningtable_place)
    (receptacleatlocation fridge fridge_place)
    (inreceptacle apple countertop)
    (inreceptacle mug fridge))
  (:goal (inreceptacle apple diningtable)))
