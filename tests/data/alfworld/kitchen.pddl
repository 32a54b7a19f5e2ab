; A hand-written ALFWorld-style domain (ALFWorld's own is far larger): an agent walks between receptacles,
; takes one object at a time and puts it on or in a receptacle.
(define (domain kitchen)
  (:requirements :typing :negative-preconditions :equality)
  (:types agent location receptacle object)
  (:predicates
    (atlocation ?a - agent ?l - location)
    (receptacleatlocation ?r - receptacle ?l - location)
    (inreceptacle ?o - object ?r - receptacle)
    (holds ?a - agent ?o - object)
    (handempty ?a - agent))
  (:action GotoLocation
    :parameters (?a - agent ?lstart - location ?lend - location ?r - receptacle)
    :precondition (and (atlocation ?a ?lstart) (receptacleatlocation ?r ?lend) (not (= ?lstart ?lend)))
    :effect (and (atlocation ?a ?lend) (not (atlocation ?a ?lstart))))
  (:action PickupObject
    :parameters (?a - agent ?l - location ?o - object ?r - receptacle)
    :precondition (and (atlocation ?a ?l) (receptacleatlocation ?r ?l) (inreceptacle ?o ?r) (handempty ?a))
    :effect (and (holds ?a ?o) (not (handempty ?a)) (not (inreceptacle ?o ?r))))
  (:action PutObject
    :parameters (?a - agent ?l - location ?o - object ?r - receptacle)
    :precondition (and (atlocation ?a ?l) (receptacleatlocation ?r ?l) (holds ?a ?o))
    :effect (and (inreceptacle ?o ?r) (handempty ?a) (not (holds ?a ?o)))))
